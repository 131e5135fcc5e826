# The test suite runs once per Keras backend.
BACKENDS ?= tensorflow jax torch
PYTEST_ARGS ?= -q

.PHONY: test install demo

install:
	python3 -m pip install -q -e ".[all]"

test:
	@for backend in $(BACKENDS); do \
		echo "=== KERAS_BACKEND=$$backend"; \
		KERAS_BACKEND=$$backend python3 -m pytest $(PYTEST_ARGS) || exit 1; \
	done

demo:
	cora-keras demo --out runs/demo
