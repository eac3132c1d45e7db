# The two commands of the README: `make demo` and `make test`. Both set up first (idempotent, quiet).
SHELL := /bin/bash
VENV := .venv
KB := $(VENV)/bin/kbypass
BPF_SRC := $(wildcard bpf/*.bpf.c)
BPF_OBJ := $(patsubst bpf/%.bpf.c,src/kbypass/bpf/obj/%.bpf.o,$(BPF_SRC))
# The first `make demo` parses this file before setup has installed gcc or made .venv: ARCH_INC is deferred
# (=), so gcc runs only when a BPF object is built (after setup), and every $(shell ...) here is silenced, so
# a program that is not there yet prints nothing.
ARCH_INC = /usr/include/$(shell gcc -dumpmachine 2>/dev/null)
# The C core (csrc/core/*.c -> build/libkbcore.a: rings, UMEM accounting, the UDP lane, the transport codec;
# no Python in it, -fPIC so a preload shim can link it too) and kbypass's C modules, thin CPython bindings
# over it (csrc/*.c -> kbypass._<name>; kbypass.backend imports them, Python paths are the fallback).
CFLAGS_C := -O2 -g -std=gnu11 -Wall -Wextra -Werror -fPIC
CORE_OBJ := $(patsubst csrc/core/%.c,build/core/%.o,$(wildcard csrc/core/*.c))
CORE_LIB := build/libkbcore.a
PY_INC = $(shell $(VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["include"])' 2>/dev/null)
PY_EXT = $(shell $(VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))' 2>/dev/null)
NATIVE := $(patsubst csrc/%.c,src/kbypass/_%$(PY_EXT),$(wildcard csrc/*.c))
PYTEST_ARGS ?=

.PHONY: demo test setup bpf core native tools preload bench clean

demo: setup
	$(KB) demo

test: setup
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

setup:
	@bash scripts/setup.sh

bpf: $(BPF_OBJ)

core: $(CORE_LIB)

native: $(NATIVE)

# Stand-alone C programs of our own (csrc/tools/*.c -> build/<name>): the C limit rows of `kbypass bench`,
# e.g. build/xdp_rxdrop, the minimal AF_XDP receiver on libxdp's xsk API.
TOOLS := $(patsubst csrc/tools/%.c,build/%,$(wildcard csrc/tools/*.c))

tools: $(TOOLS)

build/%: csrc/tools/%.c
	@mkdir -p $(dir $@)
	gcc $(CFLAGS_C) $< -o $@ -lxdp -lbpf

build/core/%.o: csrc/core/%.c $(wildcard csrc/core/*.h)
	@mkdir -p $(dir $@)
	gcc $(CFLAGS_C) -c $< -o $@

# kb_http.c twins Python's float arithmetic (CUBIC, the RTT estimator): no fused multiply-add, for any compiler
# (its pragma is gcc's alone)
build/core/kb_http.o: CFLAGS_C += -ffp-contract=off

# made afresh, so a source removed from csrc/core/ leaves no stale member behind
$(CORE_LIB): $(CORE_OBJ)
	rm -f $@
	ar rcs $@ $^

src/kbypass/_%$(PY_EXT): csrc/%.c $(wildcard csrc/*.h) $(wildcard csrc/core/*.h) $(CORE_LIB)
	gcc $(CFLAGS_C) -Wno-missing-field-initializers -Wno-cast-function-type -Wno-unused-parameter -shared \
	  -I$(PY_INC) $< -o $@ $(CORE_LIB) -Wl,--as-needed -lisal

src/kbypass/bpf/obj/%.bpf.o: bpf/%.bpf.c $(wildcard bpf/*.h)
	@mkdir -p $(dir $@)
	clang -O2 -g -Wall -Werror -target bpf -I$(ARCH_INC) -Ibpf -c $< -o $@

# The preload shim of `kbypass run` (csrc/preload/*.c + the C core -> a .so inside the package, where
# kbypass.tools.run finds it from an editable or installed tree). No libxdp, libc only; Python's headers for
# the types of kbp_py.c, which loads libpython only when an app's first TCP socket is accelerated.
PRELOAD := src/kbypass/preload/libkbypass-preload.so

preload: $(PRELOAD)

$(PRELOAD): $(wildcard csrc/preload/*) $(wildcard csrc/core/*.h) $(CORE_LIB)
	@mkdir -p $(dir $@)
	gcc $(CFLAGS_C) -shared -Wno-unused-parameter -I$(PY_INC) $(wildcard csrc/preload/*.c) -o $@ $(CORE_LIB) \
	  -Wl,--version-script=csrc/preload/exports.map -ldl -lpthread

bench: setup
	$(VENV)/bin/python bench/run.py

clean:
	rm -rf src/kbypass/bpf/obj build src/kbypass/_fast*.so $(PRELOAD)
