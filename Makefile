# The two commands of the README. Both set the machine up first (idempotent, cached).
.PHONY: setup dev test

setup:
	@bash hack/setup.sh

dev: setup
	.venv/bin/trackop dev

test: setup
	.venv/bin/python -m pytest
