# Two commands from a fresh clone: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo demo-detection test app browser clean constraints style quality

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py

# A small PaCa-ViT Mask R-CNN trained on the built-in instance scenes (COCO box / mask AP, a picture); needs the
# detection extra (pycocotools), which `make` installs with the test extra.
demo-detection: $(STAMP)
	$(PY) scripts/demo.py --task detection

test: $(STAMP) browser
	$(PY) -m pytest -q -n 2 tests

# transformers' code style (ruff settings in pyproject.toml): `make style` rewrites, `make quality` checks (CI runs it).
style: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

quality: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The app on http://127.0.0.1:7860 (MODEL=folder-or-hub-id; default: make demo's model, else random weights).
app: $(STAMP)
	$(PY) -m paca_hf.app $(if $(MODEL),--model $(MODEL))

# The app's browser test drives Debian's Chromium; browser builds that test tools download are not reachable here.
browser:
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || { \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

clean:
	rm -rf $(VENV) outputs build *.egg-info src/*.egg-info

# Pin what is installed now (after a dependency change in setup.cfg: pip install without -c, then this).
constraints: $(STAMP)
	{ sed -n '1,2p' constraints.txt; $(PY) -m pip freeze --exclude-editable; } > constraints.txt.tmp
	mv constraints.txt.tmp constraints.txt
