/*
** tty.c -- standard input as a stream the loop reads, for the REPL: a
** uv_tty_t on a terminal (raw mode for line editing), a pipe otherwise.
** These functions are private to the Lua side (not in the sr table).
*/

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include "internal.h"

/* Standard input's file status flags before libuv made it non-blocking:
** the description is shared with the shell (a pipe's reader after us, a
** terminal), and a `cat` run next would get EAGAIN. -1: untouched. */
static int sr_stdin_flags = -1;

static void sr_stdin_restore(void) {
  if (sr_stdin_flags >= 0) fcntl(STDIN_FILENO, F_SETFL, sr_stdin_flags);
}

/* os.exit() skips lua_close, where the loop's teardown restores the
** terminal: exit then does it. */
static void sr_tty_reset_at_exit(void) {
  uv_tty_reset_mode();
  sr_stdin_restore();
}

/* Set up s (kind SR_TTY) over descriptor 0. A regular file or anything
** else epoll cannot watch is refused before a handle exists; *inited says
** when one does (then the caller closes it on failure). */
int sr__tty_init(sr_socket *s, int *inited) {
  static int at_exit;
  uv_loop_t *loop = &s->loop->uv;
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
  sr_stdin_restore();
}

/* core.ttymode(stdin, "raw" | "normal") */
static int sr_tty_mode(lua_State *L) {
  static const char *const modes[] = {"normal", "raw", NULL};
  sr_socket *s = sr__check_socket(L, 1);
  int mode = luaL_checkoption(L, 2, NULL, modes), err;
  if (s == NULL) return 3;
  if (s->h.handle.type != UV_TTY) return sr__fail(L, UV_ENOTTY);
  err = uv_tty_set_mode(&s->h.tty,
                        mode == 1 ? UV_TTY_MODE_RAW : UV_TTY_MODE_NORMAL);
  if (err < 0) return sr__fail(L, err);
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

static const luaL_Reg sr_tty_funcs[] = {{"stdin", sr_tty_stdin},
                                        {"isatty", sr_tty_isatty},
                                        {"ttymode", sr_tty_mode},
                                        {"winsize", sr_tty_winsize},
                                        {NULL, NULL}};

void sr__tty_open(lua_State *L, sr_loop *lp) {
  sr__setfuncs(L, sr_tty_funcs, lp);
}
