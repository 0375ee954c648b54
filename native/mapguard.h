/* Read-only file mappings that survive the file shrinking under them.
 *
 * Touching a page of a mapping past the end of its file raises SIGBUS, which
 * kills the process.  mg_map() registers each mapping in a table that a
 * SIGBUS handler consults: a fault inside a registered mapping has a page of
 * zeros mapped over the faulting page and is recorded (mg_faulted), so the
 * reader finishes its block and then reports that the file changed instead
 * of crashing.  Faults anywhere else go to the handler that was installed
 * before (restored, so the fault is taken again there).
 */
#ifndef INGEST_MAPGUARD_H
#define INGEST_MAPGUARD_H

#include <stddef.h>
#include <stdint.h>

#define MG_SLOTS 256            /* mappings registered at once */

/* Map [offset, offset + length) of fd read-only; offset must be a multiple
 * of the page size, length > 0.  With `populate`, the pages are mapped (and
 * read if not cached) before it returns.  0 and *addr, *slot on success; an
 * errno value otherwise (EBUSY: every slot in use). */
int mg_map(int fd, uint64_t offset, size_t length, int populate, void **addr, int *slot);

/* Nonzero once a page of the mapping in `slot` could not be read. */
int mg_faulted(int slot);

/* Unmap and free the slot. */
void mg_unmap(void *addr, size_t length, int slot);

#endif
