"""Active speaker detection for in-the-wild videos (paper Supp. C).

- ``shots``: shot boundaries (PySceneDetect's content detector, in numpy);
- ``facetracks``: faces detected (dlib) and linked into tracks per shot, as TalkNet's demo;
- ``talknet``: TalkNet-ASD in plain PyTorch; ``sync``/``vad``: the weight-free fallback;
- ``detectors``: both behind one interface; ``analysis``: one video end to end.

The segment rules are in ``featstore.segments``; the segment dataset in
``featstore.datasets.segments``.
"""
