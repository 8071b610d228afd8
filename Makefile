# Set-up and the two Quick-start jobs. Everything lands in ./.venv; torch/torchvision are pinned by
# constraints.txt for CPU machines like ours (the package itself asks only for torch>=2.1).
PYTHON ?= python3
VENV ?= .venv
PIP = $(VENV)/bin/pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: venv venv-test demo test

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

venv: $(VENV)/bin/python
	$(PIP) -e '.[preview]'

# grad-cam pulls opencv-python-headless; the contrib wheel (cv2.saliency, the SaliencyMix oracle) ships the
# same cv2 package, so it is (re)installed last to win.
venv-test: $(VENV)/bin/python
	$(PIP) -e '.[test,preview]'
	$(VENV)/bin/python -c "import cv2; cv2.saliency" 2>/dev/null || $(PIP) --force-reinstall --no-deps opencv-contrib-python-headless
	$(VENV)/bin/python -c "import cv2; cv2.saliency" || (echo 'cv2.saliency missing: install opencv-contrib-python-headless last' && exit 1)

demo: venv
	$(VENV)/bin/timm-camaug demo

test: venv-test
	$(VENV)/bin/python -m pytest
