/*
** tty.c -- standard input as a stream the loop reads, for the REPL: a
** uv_tty_t on a terminal (raw mode for line editing), a pipe otherwise.
** These functions are private to the Lua side (not in the sr table).
*/

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include "internal.h"

/* Standard input's file status flags before libuv made it non-blocking:
** the description is shared with the shell (a pipe's reader after us, a
** terminal), and a `cat` run next would get EAGAIN. -1: untouched. */
static int sr_stdin_flags = -1;

static void sr_stdin_restore(void) {
  if (sr_stdin_flags >= 0) fcntl(STDIN_FILENO, F_SETFL, sr_stdin_flags);
}

/* In raw mode the terminal is asked to mark pasted text (bracketed
** paste), so that the editor takes a Tab in it as a Tab, not completion. */
static int sr_paste_marked;
static const char sr_paste_on[] = "\33[?2004h", sr_paste_off[] = "\33[?2004l";

static void sr_paste_mark(int on) {
  ssize_t r;
  if (on == sr_paste_marked || !isatty(STDOUT_FILENO)) return;
  r = write(STDOUT_FILENO, on ? sr_paste_on : sr_paste_off,
            sizeof sr_paste_on - 1);
  (void)r; /* a terminal that takes no escape codes: nothing to undo */
  sr_paste_marked = on;
}

/* os.exit() skips lua_close, where the loop's teardown restores the
** terminal: exit then does it. */
static void sr_tty_reset_at_exit(void) {
  uv_tty_reset_mode();
  sr_paste_mark(0);
  sr_stdin_restore();
}

/* Set up s (kind SR_TTY) over descriptor 0. A regular file or anything
** else epoll cannot watch is refused before a handle exists; *inited says
** when one does (then the caller closes it on failure). */
int sr__tty_init(sr_socket *s, int *inited) {
  static int at_exit;
  uv_loop_t *loop = &sr_socket_loop(s)->uv;
  int err;
  if (sr_stdin_flags < 0) sr_stdin_flags = fcntl(STDIN_FILENO, F_GETFL);
  if (!at_exit) at_exit = atexit(sr_tty_reset_at_exit) == 0;
  switch (uv_guess_handle(STDIN_FILENO)) {
    case UV_TTY:
      err = uv_tty_init(loop, &s->h.tty, STDIN_FILENO, 1);
      break;
    case UV_NAMED_PIPE:
      err = uv_pipe_init(loop, &s->h.pipe, 0);
      if (err == 0) {
        *inited = 1;
        err = uv_pipe_open(&s->h.pipe, STDIN_FILENO);
      }
      break;
    default:
      return UV_EINVAL;
  }
  if (err == 0) {
    s->fd = STDIN_FILENO;
    s->connected = 1;
  }
  return err;
}

/* core.stdin(): the stream, or nil, msg, code (a file, /dev/null...). */
static int sr_tty_stdin(lua_State *L) {
  sr_loop *lp = sr_getloop(L);
  if (sr__new_socket(L, lp, SR_TTY, AF_UNIX) == NULL)
    return sr__fail(L, UV_EINVAL);
  return 1;
}

static int sr_tty_isatty(lua_State *L) {
  lua_pushboolean(L, uv_guess_handle((int)luaL_checkinteger(L, 1)) == UV_TTY);
  return 1;
}

/* Before the handle closes: the terminal is restored through the
** descriptor libuv opened for it, which the close shuts (a REPL ended by
** sr.stop() or a signal would leave the shell raw), and stdin's flags. */
void sr__tty_release(sr_socket *s) {
  if (s->h.handle.type == UV_TTY)
    uv_tty_set_mode(&s->h.tty, UV_TTY_MODE_NORMAL);
  sr_paste_mark(0);
  sr_stdin_restore();
}

/* The raw mode's settings while a command runs in "command" mode. */
static struct termios sr_raw_termios;
static int sr_in_command;

/*
** core.ttymode(stdin, "raw" | "normal" | "command"). "command" is raw
** mode in which Ctrl-C (only it: not Ctrl-\ nor Ctrl-Z) raises SIGINT, for
** while a command runs: a command that computes and never yields reads no
** keys, so only a signal can interrupt it (core.interruptible). libuv
** keeps taking the terminal for raw then; "raw" puts raw mode back.
*/
static int sr_tty_mode(lua_State *L) {
  static const char *const modes[] = {"normal", "raw", "command", NULL};
  sr_socket *s = sr__check_socket(L, 1);
  int mode = luaL_checkoption(L, 2, NULL, modes), err, fd;
  if (s == NULL) return 3;
  if (s->h.handle.type != UV_TTY) return sr__fail(L, UV_ENOTTY);
  if ((err = uv_fileno(&s->h.handle, &fd)) < 0) return sr__fail(L, err);
  if (sr_in_command) { /* back to raw first, whatever comes next */
    if (tcsetattr(fd, TCSANOW, &sr_raw_termios) < 0)
      return sr__fail(L, -errno);
    sr_in_command = 0;
  }
  err = uv_tty_set_mode(&s->h.tty,
                        mode == 0 ? UV_TTY_MODE_NORMAL : UV_TTY_MODE_RAW);
  if (err < 0) return sr__fail(L, err);
  sr_paste_mark(mode != 0);
  if (mode == 2) {
    struct termios t;
    if (tcgetattr(fd, &sr_raw_termios) < 0) return sr__fail(L, -errno);
    t = sr_raw_termios;
    t.c_lflag |= ISIG;
    t.c_cc[VQUIT] = _POSIX_VDISABLE;
    t.c_cc[VSUSP] = _POSIX_VDISABLE;
    if (tcsetattr(fd, TCSANOW, &t) < 0) return sr__fail(L, -errno);
    sr_in_command = 1;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/*
** Interrupting a command. While on, SIGINT has a handler of ours (libuv's
** is put back after): it sets a hook on the command's coroutine, which
** raises "interrupted!" at its next call, return or instruction, as
** lua5.4's REPL does for a busy loop, and wakes the loop, which calls the
** REPL's function (to cancel a command that waits instead). Setting a hook
** is what Lua allows a signal handler to do.
*/
static lua_State *volatile sr_interrupt_co;
static uv_async_t *sr_interrupt_async;
static int sr_interrupt_fn = LUA_NOREF, sr_interrupt_anchor = LUA_NOREF;
static struct sigaction sr_saved_sigint;

/* Set by the handler, cleared once the loop or the hook took it: a second
** Ctrl-C while the first is still pending means nothing is taking them (a
** task the command spawned computes forever, where the hook is not), and
** the process exits. */
static volatile sig_atomic_t sr_interrupt_pending;

static void sr_interrupt_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_sethook(L, NULL, 0, 0);
  sr_interrupt_pending = 0;
  luaL_error(L, "interrupted!");
}

static void sr_interrupt_signal(int sig) {
  static const char msg[] = "\r\nsockrun: interrupted twice; exiting\r\n";
  lua_State *co = sr_interrupt_co;
  ssize_t r;
  (void)sig;
  if (co == NULL) return;
  if (sr_interrupt_pending) { /* all of it async-signal-safe */
    uv_tty_reset_mode();
    if (sr_paste_marked)
      r = write(STDOUT_FILENO, sr_paste_off, sizeof sr_paste_off - 1);
    r = write(STDERR_FILENO, msg, sizeof msg - 1);
    (void)r;
    _exit(130);
  }
  sr_interrupt_pending = 1;
  lua_sethook(co, sr_interrupt_hook,
              LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
  uv_async_send(sr_interrupt_async);
}

static void sr_interrupt_off(lua_State *L) {
  sr_interrupt_pending = 0;
  if (sr_interrupt_co == NULL) return;
  sigaction(SIGINT, &sr_saved_sigint, NULL);
  lua_sethook(sr_interrupt_co, NULL, 0, 0);
  sr_interrupt_co = NULL;
  luaL_unref(L, LUA_REGISTRYINDEX, sr_interrupt_fn);
  luaL_unref(L, LUA_REGISTRYINDEX, sr_interrupt_anchor);
  sr_interrupt_fn = sr_interrupt_anchor = LUA_NOREF;
}

/* At the loop's teardown, whose walk closes the async handle: SIGINT goes
** back to whoever had it, and nothing here points into the state. */
void sr__tty_forget(sr_loop *lp) {
  if (sr_interrupt_async == NULL || sr_interrupt_async->data != lp) return;
  if (sr_interrupt_co != NULL) sigaction(SIGINT, &sr_saved_sigint, NULL);
  sr_interrupt_co = NULL;
  sr_interrupt_fn = sr_interrupt_anchor = LUA_NOREF;
  sr_interrupt_async = NULL;
}

/* The loop's turn after the signal: the command may still wait. */
static void sr_interrupt_cb(uv_async_t *a) {
  sr_loop *lp = a->data;
  lua_State *L = lp->L;
  sr_interrupt_pending = 0;
  if (L == NULL || sr_interrupt_co == NULL) return;
  lua_sethook(sr_interrupt_co, NULL, 0, 0); /* not for its <close>s */
  lua_rawgeti(L, LUA_REGISTRYINDEX, sr_interrupt_fn);
  if (lua_pcall(L, 0, 0, 0) != LUA_OK) lua_pop(L, 1);
}

/* core.interruptible(fn | nil): on for the calling coroutine, fn called
** from the loop on each SIGINT; nil: off. */
static int sr_tty_interruptible(lua_State *L) {
  sr_loop *lp = sr_getloop(L);
  struct sigaction sa;
  sr_interrupt_off(L);
  if (lua_isnoneornil(L, 1)) return 0;
  luaL_checktype(L, 1, LUA_TFUNCTION);
  if (sr_interrupt_async == NULL) {
    if ((sr_interrupt_async = malloc(sizeof *sr_interrupt_async)) == NULL)
      return sr__fail(L, UV_ENOMEM);
    uv_async_init(&lp->uv, sr_interrupt_async, sr_interrupt_cb);
    sr_interrupt_async->data = lp;
    uv_unref((uv_handle_t *)sr_interrupt_async);
  }
  lua_settop(L, 1);
  sr_interrupt_fn = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushthread(L); /* the coroutine stays while the hook may point at it */
  sr_interrupt_anchor = luaL_ref(L, LUA_REGISTRYINDEX);
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = sr_interrupt_signal;
  sa.sa_flags = SA_RESTART; /* a command's blocking write is not cut short */
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, &sr_saved_sigint);
  sr_interrupt_co = L;
  lua_pushboolean(L, 1);
  return 1;
}

/* core.winsize(stdin): columns, rows. */
static int sr_tty_winsize(lua_State *L) {
  sr_socket *s = sr__check_socket(L, 1);
  int w, h, err;
  if (s == NULL) return 3;
  if (s->h.handle.type != UV_TTY) return sr__fail(L, UV_ENOTTY);
  if ((err = uv_tty_get_winsize(&s->h.tty, &w, &h)) < 0)
    return sr__fail(L, err);
  lua_pushinteger(L, w);
  lua_pushinteger(L, h);
  return 2;
}

/* core.create_private(path): create path, readable by its owner only, if
** it is not there (the REPL's history: what was typed may hold secrets). */
static int sr_tty_create_private(lua_State *L) {
  int fd = open(luaL_checkstring(L, 1), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC,
                0600);
  if (fd < 0) return sr__fail(L, -errno);
  close(fd);
  lua_pushboolean(L, 1);
  return 1;
}

static const luaL_Reg sr_tty_funcs[] = {{"stdin", sr_tty_stdin},
                                        {"isatty", sr_tty_isatty},
                                        {"ttymode", sr_tty_mode},
                                        {"winsize", sr_tty_winsize},
                                        {"interruptible", sr_tty_interruptible},
                                        {"create_private", sr_tty_create_private},
                                        {NULL, NULL}};

void sr__tty_open(lua_State *L, sr_loop *lp) {
  sr__setfuncs(L, sr_tty_funcs, lp);
}
