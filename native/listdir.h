/* One directory's entries, sorted by name, with what a tree walk needs of
 * each: whether it is a regular file (and its size) or a directory to
 * enter, in one call without the GIL.
 */
#ifndef INGEST_LISTDIR_H
#define INGEST_LISTDIR_H

#include <stddef.h>
#include <stdint.h>

enum { LD_FILE = 1, LD_DIR = 2 };

typedef struct {
    char *name;         /* NUL-terminated, owned by the listing */
    uint64_t size;      /* LD_FILE: st_size, symlinks followed */
    int kind;           /* LD_FILE, LD_DIR; 0: anything else (skipped) */
} ld_entry;

typedef struct {
    ld_entry *entries;
    size_t n;
} ld_listing;

/* List `path`: every entry but "." and "..", sorted by name (byte order).
 * A regular file, or a symlink to one, is LD_FILE with the size stat(2)
 * gives; a directory that is not a symlink is LD_DIR; symlinks to
 * directories, other file types, and entries that cannot be stat'ed (gone
 * meanwhile) are 0.  0 on success (free with ld_free); an errno value if
 * the directory cannot be opened or read. */
int ld_list(const char *path, ld_listing *out);

void ld_free(ld_listing *listing);

#endif
