"""``cifarlab serve``: a local, read-only web app over run and sweep folders (the ``serve`` extra).

- ``roots``: the served folders, the runs and sweeps found in them, ids, and the check that a path stays inside;
- ``caches``: bounded caches (by count and by bytes) and the on-disk cache under ``$CIFARLAB_CACHE_DIR/serve``;
- ``store``: each run as the server shows it (:class:`RunData`), read once per change of its files;
- ``pictures``: test images as PNG, Grad-CAM laid over an image;
- ``explain``: the run's model on demand: Grad-CAM of a test image, the answer for an uploaded photo;
- ``upload``: an uploaded file read with a byte cap;
- ``charts``: learning curves and the reliability diagram as SVG;
- ``views``: the runs table, a run's page, a confusion cell's images, one test image, the API answers;
- ``compare_view``: two runs compared image by image;
- ``app``: the Starlette app (``make_app``), its templates and error answers;
- ``routes``: every URL and its handler.
"""
