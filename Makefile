# sockrun -- a Lua-scriptable socket runtime over libuv.
# `make` builds build/sockrun (the runner, Lua side built in) and
# build/lua/sockrun/core.so (the C module for stock lua5.4).

# == Settings =================================================================
PREFIX ?= /usr/local
CC ?= cc
PKG_CONFIG ?= pkg-config
LUA ?= lua5.4
BUSTED ?= busted
BUILD ?= build

PKGS = lua5.4 libuv
DEPS_CFLAGS := $(shell $(PKG_CONFIG) --cflags $(PKGS) 2>/dev/null)
LIBUV_LIBS := $(shell $(PKG_CONFIG) --libs libuv 2>/dev/null)
LUA_LIBS := $(shell $(PKG_CONFIG) --libs lua5.4 2>/dev/null)

# -flto: the read and write paths cross files (socket.c -> stream.c) on
# every call; link-time optimisation inlines across them (about 2% fewer
# instructions per pipelined RESP command, bench/README.md).
OPT ?= -O2 -g -flto
WARN = -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes
CFLAGS ?= $(OPT)
ALL_CFLAGS = -std=gnu11 $(WARN) -fPIC -fvisibility=hidden $(DEPS_CFLAGS) $(CFLAGS) $(SAN)
LDFLAGS ?=
LINK_OPT = $(filter -O% -flto%,$(OPT)) # what link-time optimisation needs

LUA_V = 5.4
BINDIR = $(PREFIX)/bin
CMODDIR = $(PREFIX)/lib/lua/$(LUA_V)
LMODDIR = $(PREFIX)/share/lua/$(LUA_V)

# == Files ====================================================================
CORE_SRC = src/util.c src/loop.c src/task.c src/socket.c src/stream.c \
           src/dgram.c src/dns.c src/signal.c src/tty.c
CORE_OBJ = $(CORE_SRC:src/%.c=$(BUILD)/obj/%.o)
LUA_SRC = lua/sockrun.lua lua/sockrun/repl.lua
EXAMPLES = $(wildcard examples/*.lua)

# == Targets ==================================================================
.PHONY: all test sanitize run install uninstall clean deps bench format

all: $(BUILD)/sockrun $(BUILD)/lua/sockrun/core.so

$(BUILD)/obj/%.o: src/%.c src/internal.h
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

# The module exports luaopen_sockrun_core only (-fvisibility=hidden);
# liblua is not linked: symbols come from the interpreter that loads it.
$(BUILD)/lua/sockrun/core.so: $(CORE_OBJ)
	@mkdir -p $(dir $@)
	$(CC) -shared $(SAN) $(LINK_OPT) $(LDFLAGS) -o $@ $(CORE_OBJ) $(LIBUV_LIBS)

# The Lua side, compiled into the binary as C arrays.
$(BUILD)/embed.c: $(LUA_SRC) tools/embed.lua
	@mkdir -p $(dir $@)
	$(LUA) tools/embed.lua $@ $(LUA_SRC)

$(BUILD)/obj/embed.o: $(BUILD)/embed.c
	$(CC) $(ALL_CFLAGS) -Wno-overlength-strings -c $< -o $@

$(BUILD)/obj/main.o: src/main.c src/internal.h
$(BUILD)/obj/alloc.o: src/alloc.c src/internal.h

# The binary: the core, its own main and Lua allocator, the Lua side.
$(BUILD)/sockrun: $(CORE_OBJ) $(BUILD)/obj/main.o $(BUILD)/obj/alloc.o $(BUILD)/obj/embed.o
	$(CC) $(SAN) $(LINK_OPT) $(LDFLAGS) -Wl,-E -o $@ $^ $(LUA_LIBS) $(LIBUV_LIBS) -lm

# Install missing Debian packages (as root), build, start the echo server.
deps:
	@sh tools/deps.sh

# all in a make of its own: this one worked out the compiler flags from
# pkg-config when it read this file, before deps could install it
run: deps
	$(MAKE) all
	$(BUILD)/sockrun examples/echo_server.lua

test: all $(BUILD)/lua-failalloc
	LUA_PATH="$(CURDIR)/lua/?.lua;$(CURDIR)/spec/?.lua;;" \
	LUA_CPATH="$(CURDIR)/$(BUILD)/lua/?.so;;" \
	SOCKRUN="$(CURDIR)/$(BUILD)/sockrun" \
	LUA_FAILALLOC="$(CURDIR)/$(BUILD)/lua-failalloc" \
	$(LUA) $$(command -v $(BUSTED)) --output=spec/summary.lua spec

# A Lua interpreter whose allocator fails on demand, for the specs of what
# happens out of memory (tools/lua-host.c).
$(BUILD)/lua-failalloc: tools/lua-host.c
	$(CC) $(ALL_CFLAGS) -DFAILALLOC -o $@ $< $(LUA_LIBS) -lm

# The same specs with AddressSanitizer and UndefinedBehaviorSanitizer,
# leak detection on, run by a small sanitized Lua interpreter (see
# tools/lua-host.c) so that no process the specs start inherits ASan.
SAN_FLAGS = -fsanitize=address,undefined -fno-omit-frame-pointer \
            -fno-sanitize-recover=undefined
$(BUILD)/lua-san: tools/lua-host.c
	$(CC) $(ALL_CFLAGS) -o $@ $< $(LUA_LIBS) -lm

sanitize:
	$(MAKE) BUILD=build-san SAN="$(SAN_FLAGS)" OPT="-O1 -g" all build-san/lua-san \
	  build-san/lua-failalloc
	ASAN_OPTIONS=detect_leaks=1:exitcode=23 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	LUA_PATH="$(CURDIR)/lua/?.lua;$(CURDIR)/spec/?.lua;;" \
	LUA_CPATH="$(CURDIR)/build-san/lua/?.so;;" \
	SOCKRUN="$(CURDIR)/build-san/sockrun" \
	LUA_FAILALLOC="$(CURDIR)/build-san/lua-failalloc" \
	build-san/lua-san $$(command -v $(BUSTED)) --output=spec/summary.lua spec

install: all
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(CMODDIR)/sockrun $(DESTDIR)$(LMODDIR)/sockrun
	install -m 755 $(BUILD)/sockrun $(DESTDIR)$(BINDIR)/sockrun
	install -m 755 $(BUILD)/lua/sockrun/core.so $(DESTDIR)$(CMODDIR)/sockrun/core.so
	install -m 644 lua/sockrun.lua $(DESTDIR)$(LMODDIR)/sockrun.lua
	install -m 644 lua/sockrun/repl.lua $(DESTDIR)$(LMODDIR)/sockrun/repl.lua

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/sockrun $(DESTDIR)$(CMODDIR)/sockrun/core.so \
	      $(DESTDIR)$(LMODDIR)/sockrun.lua $(DESTDIR)$(LMODDIR)/sockrun/repl.lua
	-rmdir $(DESTDIR)$(CMODDIR)/sockrun $(DESTDIR)$(LMODDIR)/sockrun 2>/dev/null

format:
	clang-format -i src/*.c src/*.h

clean:
	rm -rf build build-san build-fuzz

# == Fuzzing (clang's libFuzzer) ==============================================
# `make fuzz` runs each target for FUZZ_SECONDS on its corpus in
# spec/fuzz/corpus/<target>; new inputs found are kept there. A crash
# leaves its input as build-fuzz/crash-*: make it a regression test.
FUZZ_SECONDS ?= 30
FUZZ_CC ?= clang
FUZZ_FLAGS = -g -O1 -fsanitize=fuzzer-no-link,address,undefined
FUZZ_TARGETS = framing address alloc
FUZZ_OBJ = $(CORE_SRC:src/%.c=build-fuzz/obj/%.o) build-fuzz/obj/alloc.o

build-fuzz/obj/%.o: src/%.c src/internal.h
	@mkdir -p $(dir $@)
	$(FUZZ_CC) -std=gnu11 $(WARN) $(DEPS_CFLAGS) $(FUZZ_FLAGS) -c $< -o $@

build-fuzz/%: spec/fuzz/%.c $(FUZZ_OBJ)
	$(FUZZ_CC) -std=gnu11 $(WARN) $(DEPS_CFLAGS) -g -O1 \
	  -fsanitize=fuzzer,address,undefined -o $@ $< $(FUZZ_OBJ) \
	  $(LUA_LIBS) $(LIBUV_LIBS) -lm

.PHONY: fuzz
fuzz: $(FUZZ_TARGETS:%=build-fuzz/%)
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p spec/fuzz/corpus/$$t; \
	  echo "== fuzz $$t ($(FUZZ_SECONDS) s)"; \
	  (cd build-fuzz && ./$$t -max_total_time=$(FUZZ_SECONDS) \
	     -print_final_stats=1 ../spec/fuzz/corpus/$$t 2>&1 | tail -4) || exit 1; \
	  test -z "$$(ls build-fuzz/crash-* 2>/dev/null)" || exit 1; \
	done
.SECONDARY:

# == Benchmarks (bench/README.md) ==============================================
# `make bench` installs the bench's peers (bench/deps.sh), builds the C
# baseline and load programs, and runs bench/run.lua: a full run takes about
# 10 minutes and writes bench/results.md. Not part of `make test`.
# Quick smoke run: BENCH_RUNS=1 BENCH_DURATION=2 make bench
BENCH_BIN = $(BUILD)/bench
BENCH_PROGS = $(BENCH_BIN)/cserver $(BENCH_BIN)/echoload \
              $(BENCH_BIN)/idleconn $(BENCH_BIN)/probe

$(BENCH_BIN)/%: bench/c/%.c
	@mkdir -p $(dir $@)
	$(CC) -std=gnu11 -O2 -Wall -Wextra -Werror $(DEPS_CFLAGS) -o $@ $< $(LIBUV_LIBS)

bench: all
	@sh bench/deps.sh
	$(MAKE) --no-print-directory $(BENCH_PROGS)
	SOCKRUN="$(BUILD)/sockrun" BENCH_BIN="$(BENCH_BIN)" \
	BENCH_LOGS="$(BUILD)/bench/logs" $(LUA) bench/run.lua

# Instructions per request under callgrind (bench/instructions.sh): stable
# on a noisy machine, user space only. About 3 minutes.
.PHONY: bench-instr
bench-instr: all
	@sh bench/deps.sh
	$(MAKE) --no-print-directory $(BENCH_PROGS)
	SOCKRUN="$(BUILD)/sockrun" BENCH_BIN="$(BENCH_BIN)" bash bench/instructions.sh

# == Soak (not in CI): misbehaving clients against the examples ===============
SOAK_MINUTES ?= 10
.PHONY: soak valgrind
soak: all
	$(BUILD)/sockrun tools/soak.lua $(SOAK_MINUTES)

# == valgrind memcheck of a chosen subset of the specs (CI runs it) ===========
VALGRIND_SPECS ?= spec/stream_spec.lua spec/unix_spec.lua spec/udp_spec.lua
valgrind: all
	LUA_PATH="$(CURDIR)/lua/?.lua;$(CURDIR)/spec/?.lua;;" \
	LUA_CPATH="$(CURDIR)/$(BUILD)/lua/?.so;;" \
	SOCKRUN="$(CURDIR)/$(BUILD)/sockrun" \
	valgrind -q --error-exitcode=99 --leak-check=full \
	  --errors-for-leak-kinds=definite --trace-children=no \
	  $(LUA) $$(command -v $(BUSTED)) --output=spec/summary.lua $(VALGRIND_SPECS)
