/*
** dns.c -- sr.resolve: getaddrinfo on libuv's thread pool. A wait that
** times out or is cancelled abandons its request, which frees itself when
** the lookup finishes. An answer handed to a waiting task is listed in the
** loop until the task takes it: a task may end without taking it (its
** coroutine closed by the script, the state closing), and then the
** loop's teardown frees it.
*/

#include <arpa/inet.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

struct sr_dns_req {
  uv_getaddrinfo_t req;
  sr_task *task; /* waiting task, NULL once abandoned */
  int done, status;
  struct addrinfo *res;
  sr_dns_req *next, **pprev; /* in lp->answers, once handed to the task */
};

static void sr_dns_free(sr_dns_req *r) {
  if (r->pprev != NULL) {
    if (r->next != NULL) r->next->pprev = r->pprev;
    *r->pprev = r->next;
  }
  uv_freeaddrinfo(r->res);
  free(r);
}

static void sr_dns_cb(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  sr_dns_req *r = (sr_dns_req *)req;
  sr_loop *lp = req->loop->data;
  r->done = 1;
  r->status = status;
  r->res = res;
  if (r->task != NULL && lp->L != NULL) {
    if ((r->next = lp->answers) != NULL) r->next->pprev = &r->next;
    r->pprev = &lp->answers;
    lp->answers = r;
    sr__wake(r->task, 0);
  } else {
    sr_dns_free(r);
  }
}

/* At teardown: the answers no task took. */
void sr__dns_free_answers(sr_loop *lp) {
  while (lp->answers != NULL) sr_dns_free(lp->answers);
}

/* The waiting task goes (task.c): the answer, when it comes, is freed. */
void sr__dns_detach(sr_task *t) {
  sr_dns_req *r = t->wait_on;
  r->task = NULL;
}

/* The answer as a list of {family=, addr=}, duplicates dropped. */
static int sr_dns_push(lua_State *L, sr_dns_req *r) {
  struct addrinfo *ai;
  int n = 0;
  if (r->status < 0) return sr__fail(L, r->status);
  lua_newtable(L);
  for (ai = r->res; ai != NULL; ai = ai->ai_next) {
    char host[INET6_ADDRSTRLEN];
    const void *a;
    int i, dup = 0;
    if (ai->ai_family == AF_INET)
      a = &((struct sockaddr_in *)ai->ai_addr)->sin_addr;
    else if (ai->ai_family == AF_INET6)
      a = &((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr;
    else
      continue;
    inet_ntop(ai->ai_family, a, host, sizeof host);
    for (i = 1; i <= n && !dup; i++) {
      lua_rawgeti(L, -1, i);
      lua_getfield(L, -1, "addr");
      dup = strcmp(lua_tostring(L, -1), host) == 0;
      lua_pop(L, 2);
    }
    if (dup) continue;
    lua_createtable(L, 0, 2);
    lua_pushstring(L, sr__family_name(ai->ai_family));
    lua_setfield(L, -2, "family");
    lua_pushstring(L, host);
    lua_setfield(L, -2, "addr");
    lua_rawseti(L, -2, ++n);
  }
  return 1;
}

static int sr_resolve_k(lua_State *L, int status, lua_KContext ctx) {
  sr_dns_req *r = (sr_dns_req *)ctx;
  sr_loop *lp = sr_getloop(L);
  int fresh = (status == LUA_OK);
  for (;;) {
    sr_task *t;
    /* A wait that timed out gave the request up (sr__dns_detach): the
    ** lookup may even have ended since, in the same turn of the loop, and
    ** freed it. So the timeout is looked at first, and r only if not. */
    if (!fresh && sr__timedout(lp)) return sr__fail(L, UV_ETIMEDOUT);
    if (r->done) {
      int n = sr_dns_push(L, r); /* may raise: r stays listed */
      sr_dns_free(r);
      return n;
    }
    t = sr__self(L, lp);
    r->task = t;
    t->wait_on = r;
    t->waits_on = SR_WAIT_DNS;
    sr__wait(L, t, sr__opt_seconds(L, 3), fresh, ctx, sr_resolve_k);
    fresh = 0;
  }
}

/* sr.resolve(host [, family [, timeout]]) */
static int sr_resolve(lua_State *L) {
  static const char *const fams[] = {"any", "inet", "inet6", NULL};
  static const int famv[] = {AF_UNSPEC, AF_INET, AF_INET6};
  sr_loop *lp = sr_getloop(L);
  const char *host = luaL_checkstring(L, 1);
  int family = famv[luaL_checkoption(L, 2, "any", fams)];
  struct addrinfo hints;
  sr_dns_req *r;
  int err;
  sr__opt_seconds(L, 3);
  luaL_argcheck(L, *host != '\0', 1, "empty host name");
  sr__self(L, lp); /* refuse before starting a lookup nobody can wait for */
  r = calloc(1, sizeof *r);
  if (r == NULL) return sr__fail(L, UV_ENOMEM);
  memset(&hints, 0, sizeof hints);
  hints.ai_family = family;
  hints.ai_socktype = SOCK_STREAM; /* one entry per address, not per type */
  err = uv_getaddrinfo(&lp->uv, &r->req, sr_dns_cb, host, NULL, &hints);
  if (err < 0) {
    free(r);
    return sr__fail(L, err);
  }
  return sr_resolve_k(L, LUA_OK, (lua_KContext)r);
}

static const luaL_Reg sr_dns_funcs[] = {{"resolve", sr_resolve}, {NULL, NULL}};

void sr__dns_open(lua_State *L, sr_loop *lp) {
  sr__setfuncs(L, sr_dns_funcs, lp);
}
