"""What a run's results say: computed from its saved predictions, drawn, compared and reported.

- ``plots``: the figures (confusion matrix, curves, reliability, galleries), as PNG files;
- ``gradcam``: Grad-CAM heat maps of what a model looked at;
- ``analysis``: ``cifarlab analyze``: per-class scores, confusions, calibration, galleries, from the predictions;
- ``compare``: ``cifarlab compare``: runs side by side, seeds of one setup as mean ± std;
- ``report``: ``cifarlab report``: one self-contained HTML (and Markdown) report, from ``templates/``.
"""
