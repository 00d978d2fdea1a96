/*
** alloc.c -- the allocator of the binary's Lua state. Lua gives the size
** of every block it frees or resizes, so small blocks need no header:
** they come from free lists by size (16-byte steps up to 1 KiB), cut from
** 64 KiB chunks; larger blocks come from malloc. An idle connection's
** coroutine, stack and objects then cost what Lua asks for, and most
** allocations and frees are a list pop or push.
*/

#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* ASan cannot see blocks inside our chunks: poison the free ones, so that
** a use after free or an overrun into a free block is still caught. */
#if defined(__SANITIZE_ADDRESS__) /* gcc */
#define SR_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) /* clang */
#define SR_ASAN 1
#endif
#endif
#ifdef SR_ASAN
#include <sanitizer/asan_interface.h>
#define SR_POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define SR_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define SR_POISON(p, n) ((void)(p), (void)(n))
#define SR_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

/* 16: blocks are aligned as malloc's are, for C modules' userdata. */
#define SR_POOL_GRAIN 16
#define SR_POOL_MAX 1024 /* larger blocks go to malloc */
#define SR_POOL_CLASSES (SR_POOL_MAX / SR_POOL_GRAIN)
#define SR_POOL_CHUNK (64 * 1024)

typedef struct sr_free_block {
  struct sr_free_block *next;
} sr_free_block;

typedef struct sr_chunk {
  struct sr_chunk *next; /* all chunks, freed with the pool */
} sr_chunk;

struct sr_pool {
  sr_free_block *free[SR_POOL_CLASSES + 1]; /* by size / grain */
  char *next, *end; /* the part of the newest chunk not yet cut */
  sr_chunk *chunks;
};

/* The class of a size 1..SR_POOL_MAX: blocks of class c are c grains. */
static size_t sr_class(size_t n) {
  return (n + SR_POOL_GRAIN - 1) / SR_POOL_GRAIN;
}

sr_pool *sr__pool_new(void) { return calloc(1, sizeof(sr_pool)); }

void sr__pool_free(sr_pool *p) {
  sr_chunk *c;
  if (p == NULL) return;
  while ((c = p->chunks) != NULL) {
    p->chunks = c->next;
    SR_UNPOISON(c, SR_POOL_CHUNK);
    free(c);
  }
  free(p);
}

/* A block of class c from a new chunk; what was left of the old one goes
** to the free list of its own size, so nothing is lost. */
static void *sr_pool_cut(sr_pool *p, size_t c) {
  size_t n = c * SR_POOL_GRAIN;
  void *b;
  if ((size_t)(p->end - p->next) < n) {
    size_t rest = (size_t)(p->end - p->next);
    sr_chunk *ch;
    if (rest >= SR_POOL_GRAIN) {
      sr_free_block *f = (sr_free_block *)p->next;
      SR_UNPOISON(f, sizeof *f);
      f->next = p->free[rest / SR_POOL_GRAIN];
      p->free[rest / SR_POOL_GRAIN] = f;
    }
    p->next = p->end; /* given away, even if no new chunk comes */
    if ((ch = malloc(SR_POOL_CHUNK)) == NULL) return NULL;
    ch->next = p->chunks;
    p->chunks = ch;
    p->next = (char *)ch + sizeof(sr_chunk) + (SR_POOL_GRAIN - 1);
    p->next -= (size_t)p->next % SR_POOL_GRAIN; /* grain-aligned */
    p->end = (char *)ch + SR_POOL_CHUNK;
    SR_POISON(p->next, (size_t)(p->end - p->next));
  }
  b = p->next;
  p->next += n;
  SR_UNPOISON(b, n);
  return b;
}

static void *sr_pool_get(sr_pool *p, size_t c) {
  sr_free_block *f = p->free[c];
  if (f == NULL) return sr_pool_cut(p, c);
  SR_UNPOISON(f, c * SR_POOL_GRAIN);
  p->free[c] = f->next;
  return f;
}

static void sr_pool_put(sr_pool *p, void *b, size_t c) {
  sr_free_block *f = b;
  f->next = p->free[c];
  p->free[c] = f;
  SR_POISON((char *)f + sizeof *f, c * SR_POOL_GRAIN - sizeof *f);
}

/*
** lua_Alloc. A block lives in the pool exactly when its size is at most
** SR_POOL_MAX: Lua always gives the size the block was last asked for, so
** that size tells where the block is. A resize within one class keeps the
** block; one across classes (or across SR_POOL_MAX) moves it. Failing
** returns NULL, shrinks included: Lua 5.4 copes with that.
*/
void *sr__alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  sr_pool *p = ud;
  void *nb;
  if (ptr == NULL) osize = 0; /* then osize is a type tag, not a size */
  if (nsize == 0) {
    if (ptr != NULL) {
      if (osize <= SR_POOL_MAX)
        sr_pool_put(p, ptr, sr_class(osize));
      else
        free(ptr);
    }
    return NULL;
  }
  if (osize > SR_POOL_MAX && nsize > SR_POOL_MAX) return realloc(ptr, nsize);
  if (ptr != NULL && osize <= SR_POOL_MAX && nsize <= SR_POOL_MAX &&
      sr_class(osize) == sr_class(nsize))
    return ptr;
  nb = nsize <= SR_POOL_MAX ? sr_pool_get(p, sr_class(nsize)) : malloc(nsize);
  if (nb == NULL || ptr == NULL) return nb;
  memcpy(nb, ptr, osize < nsize ? osize : nsize);
  if (osize <= SR_POOL_MAX)
    sr_pool_put(p, ptr, sr_class(osize));
  else
    free(ptr);
  return nb;
}
