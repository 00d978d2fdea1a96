/*
** framing.c -- libFuzzer target for the stream read buffer and its
** framing (src/stream.c). The input is a script of operations on one
** socket's buffer; every byte appended must come out of the reads, in
** order, exactly once, and each result must fit its format.
*/

#include <ctype.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/internal.h"

#define CHECK(c) \
  do {           \
    if (!(c)) abort(); \
  } while (0)

static lua_State *L;

/* Everything appended so far, and how much of it reads have taken. */
static char model[1 << 16];
static size_t appended, taken;

/* Leading white space in m[0..n): what "n" may skip without a result. */
static size_t spaces(const char *m, size_t n) {
  size_t k = 0;
  while (k < n && isspace((unsigned char)m[k])) k++;
  return k;
}

/* A number read took m[0..used): white space, then a numeral that Lua
** converts to the very value returned. */
static void check_number(const char *m, size_t used) {
  char num[SR_NUMERAL_MAX + 1];
  size_t ws = spaces(m, used), len = used - ws;
  CHECK(len > 0 && len <= SR_NUMERAL_MAX && !isspace((unsigned char)m[ws]));
  memcpy(num, m + ws, len);
  num[len] = '\0';
  CHECK(lua_stringtonumber(L, num) == len + 1);
  CHECK(lua_rawequal(L, -1, -2));
}

/* The read being applied; run by try_read, a C closure with the upvalues
** of s:read (at stack index 1), as sr__stream_try_read needs. */
static struct {
  sr_socket *s;
  sr_fmt fmt;
  size_t count;
  int keep;
} rd;

static int try_read(lua_State *L1) {
  return sr__stream_try_read(L1, rd.s, rd.fmt, rd.count, rd.keep);
}

/* Apply one read; check what it returned against the model. */
static void do_read(sr_socket *s, sr_fmt fmt, size_t count, int keep) {
  size_t before = s->len, used;
  int n;
  rd.s = s, rd.fmt = fmt, rd.count = count, rd.keep = keep;
  lua_pushvalue(L, 1);
  lua_call(L, 0, LUA_MULTRET);
  n = lua_gettop(L) - 1;
  used = before - s->len;
  CHECK(taken + used <= appended);
  if (fmt == SR_READ_NUMBER) { /* white space may go without a result */
    if (n == 1)
      check_number(model + taken, used);
    else
      CHECK(spaces(model + taken, used) == used);
    if (n == 0) CHECK(!s->eof);
    if (n == 3) {
      const char *code = lua_tostring(L, -1);
      CHECK(strcmp(code, "EPROTO") == 0 ||
            (strcmp(code, "EOF") == 0 && s->eof && s->len == 0));
    }
  } else if (n == 1) { /* a string */
    size_t len;
    const char *r = lua_tolstring(L, -1, &len);
    const char *m = model + taken;
    CHECK(r != NULL);
    switch (fmt) {
      case SR_READ_LINE:
        if (used > 0 && m[used - 1] == '\n') { /* a whole line */
          CHECK(memchr(m, '\n', used - 1) == NULL);
          if (keep) {
            CHECK(len == used);
          } else {
            CHECK(len == used - 1 || (len == used - 2 && m[used - 2] == '\r'));
          }
        } else { /* the tail at end of file */
          CHECK(s->eof && len == used && memchr(m, '\n', used) == NULL);
        }
        CHECK(memcmp(r, m, len) == 0);
        break;
      case SR_READ_COUNT:
        CHECK(len == used && memcmp(r, m, len) == 0);
        CHECK(len == count || (s->eof && len < count));
        break;
      default:
        CHECK(len == used && memcmp(r, m, len) == 0);
        CHECK(len > 0 || fmt == SR_READ_ALL);
        break;
    }
  } else if (n == 3) { /* nil, message, code */
    const char *code = lua_tostring(L, -1);
    CHECK(used == 0 && code != NULL);
    if (strcmp(code, "ENOBUFS") == 0)
      CHECK(fmt == SR_READ_LINE && s->len >= sr_socket_maxline(s));
    else
      CHECK(strcmp(code, "EOF") == 0 && s->eof && s->len == 0);
  } else {
    CHECK(n == 0 && used == 0 && !s->eof);
  }
  taken += used;
  CHECK(taken + s->len == appended);
  lua_settop(L, 1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  sr_socket s;
  sr_socket_extra x;
  size_t i = 0;
  if (L == NULL) {
    L = luaL_newstate();
    lua_pushnil(L); /* s:read's upvalue 1, the loop: not used here */
    lua_pushcclosure(L, try_read, 1 + sr__stream_push_read_upvalues(L));
  }
  memset(&s, 0, sizeof s);
  memset(&x, 0, sizeof x);
  x.maxline = 64; /* a small line bound, so that it is reached */
  s.extra = &x;
  appended = taken = 0;
  while (i < size) {
    uint8_t op = data[i++];
    uint8_t arg = i < size ? data[i] : 0;
    switch (op % 7) {
      case 0: { /* append the next arg bytes */
        size_t n = arg;
        i++;
        if (n > size - i) n = size - i;
        if (s.eof || appended + n > sizeof model) break;
        memcpy(model + appended, data + i, n);
        if (n > 0) CHECK(sr__stream_append(&s, (const char *)data + i, n) == 0);
        appended += n;
        i += n;
        break;
      }
      case 1: do_read(&s, SR_READ_LINE, 0, op & 0x10); break;
      case 2: i++; do_read(&s, SR_READ_COUNT, arg % 100, 0); break;
      case 3: do_read(&s, SR_READ_ANY, 0, 0); break;
      case 4: if (s.eof) do_read(&s, SR_READ_ALL, 0, 0); break;
      case 5: s.eof = 1; break;
      case 6: do_read(&s, SR_READ_NUMBER, 0, 0); break;
    }
  }
  free(s.buf);
  return 0;
}
