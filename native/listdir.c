/* See listdir.h. */
#define _GNU_SOURCE
#include "listdir.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int by_name(const void *a, const void *b)
{
    return strcmp(((const ld_entry *)a)->name, ((const ld_entry *)b)->name);
}

void ld_free(ld_listing *listing)
{
    for (size_t i = 0; i < listing->n; i++)
        free(listing->entries[i].name);
    free(listing->entries);
    listing->entries = NULL;
    listing->n = 0;
}

/* What the entry is, from its d_type (kept in e->kind since readdir) when
 * that settles it, else stat. */
static void classify(int dirfd, ld_entry *e)
{
    struct stat st;
    unsigned char d_type = (unsigned char)e->kind;
    e->kind = 0;
    e->size = 0;
    if (d_type == DT_DIR) {
        e->kind = LD_DIR;
        return;
    }
    if (d_type == DT_UNKNOWN) {
        if (fstatat(dirfd, e->name, &st, AT_SYMLINK_NOFOLLOW) != 0)
            return;
        if (S_ISDIR(st.st_mode)) {
            e->kind = LD_DIR;
            return;
        }
        if (S_ISREG(st.st_mode)) {
            e->kind = LD_FILE;
            e->size = (uint64_t)st.st_size;
            return;
        }
        if (!S_ISLNK(st.st_mode))
            return;
    } else if (d_type != DT_REG && d_type != DT_LNK) {
        return;                 /* fifo, socket, device */
    }
    /* A regular file (its size), or a symlink: followed, a file counts. */
    if (fstatat(dirfd, e->name, &st, 0) == 0 && S_ISREG(st.st_mode)) {
        e->kind = LD_FILE;
        e->size = (uint64_t)st.st_size;
    }
}

int ld_list(const char *path, ld_listing *out)
{
    out->entries = NULL;
    out->n = 0;
    DIR *dir = opendir(path);
    if (dir == NULL)
        return errno;
    size_t cap = 0;
    int err = 0;
    for (;;) {
        errno = 0;
        struct dirent *d = readdir(dir);
        if (d == NULL) {
            err = errno;
            break;
        }
        const char *nm = d->d_name;
        if (nm[0] == '.' && (nm[1] == 0 || (nm[1] == '.' && nm[2] == 0)))
            continue;
        if (out->n == cap) {
            size_t ncap = cap ? 2 * cap : 64;
            ld_entry *ne = realloc(out->entries, ncap * sizeof *ne);
            if (ne == NULL) {
                err = ENOMEM;
                break;
            }
            out->entries = ne;
            cap = ncap;
        }
        char *copy = strdup(nm);
        if (copy == NULL) {
            err = ENOMEM;
            break;
        }
        out->entries[out->n].name = copy;
        out->entries[out->n].kind = d->d_type;     /* until classify() */
        out->n++;
    }
    if (!err) {
        int fd = dirfd(dir);
        for (size_t i = 0; i < out->n; i++)
            classify(fd, &out->entries[i]);
        qsort(out->entries, out->n, sizeof *out->entries, by_name);
    }
    closedir(dir);
    if (err)
        ld_free(out);
    return err;
}
