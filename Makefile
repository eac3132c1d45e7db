# The two commands of the README: `make demo` and `make test`. Both set up first (idempotent, quiet).
SHELL := /bin/bash
VENV := .venv
KB := $(VENV)/bin/kbypass
BPF_SRC := $(wildcard bpf/*.bpf.c)
BPF_OBJ := $(patsubst bpf/%.bpf.c,src/kbypass/bpf/obj/%.bpf.o,$(BPF_SRC))
ARCH_INC := /usr/include/$(shell gcc -dumpmachine)
PYTEST_ARGS ?=

.PHONY: demo test setup bpf bench clean

demo: setup
	$(KB) demo

test: setup
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

setup:
	@bash scripts/setup.sh

bpf: $(BPF_OBJ)

src/kbypass/bpf/obj/%.bpf.o: bpf/%.bpf.c $(wildcard bpf/*.h)
	@mkdir -p $(dir $@)
	clang -O2 -g -Wall -Werror -target bpf -I$(ARCH_INC) -Ibpf -c $< -o $@

bench: setup
	$(VENV)/bin/python bench/run.py

clean:
	rm -rf src/kbypass/bpf/obj build
