# cython: language_level=3, boundscheck=False, wraparound=False
"""Chunk ids of a whole block in one call, without the GIL, on the official
BLAKE3 C implementation (vendored, unmodified, in native/blake3/); and the
envelope checks of many small objects (sealed_many) in one call.

The `blake3` package has no batch call: hashing a block's ~128 chunks one
call at a time released and re-took the GIL per chunk, and each time the
event-loop thread could take it and keep the hashing thread waiting.  Here the
arguments are checked with the GIL held, then every chunk is hashed with it
released.
"""
import numpy as np
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.stdlib cimport free, malloc

cdef extern from "blake3/blake3.h" nogil:
    enum: BLAKE3_OUT_LEN
    ctypedef struct blake3_hasher:
        pass
    const char *blake3_version()
    void blake3_hasher_init(blake3_hasher *self)
    void blake3_hasher_update(blake3_hasher *self, const void *input, size_t input_len)
    void blake3_hasher_finalize(const blake3_hasher *self, uint8_t *out, size_t out_len)

cdef uint8_t _empty[1]       # what an empty buffer's chunks (all empty) are hashed from


cdef inline void _hash_one(const uint8_t *p, size_t n, uint8_t *out) noexcept nogil:
    """BLAKE3-256 of p[0:n] into out."""
    cdef blake3_hasher h
    blake3_hasher_init(&h)
    blake3_hasher_update(&h, p, n)
    blake3_hasher_finalize(&h, out, BLAKE3_OUT_LEN)


cdef inline const uint8_t *_start(const uint8_t[::1] b) noexcept:
    """Where b's bytes start (a valid pointer for an empty buffer too)."""
    return &b[0] if b.shape[0] else &_empty[0]


cdef const uint8_t[::1] _bytes(buf):
    """buf as contiguous unsigned bytes (any C-contiguous buffer, any format)."""
    mv = memoryview(buf)
    if not mv.c_contiguous:
        raise TypeError("buf must be a C-contiguous buffer")
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    return mv


cdef const uint64_t[::1] _ends(ends):
    """A private uint64 copy of ends: what is checked is what the loop without
    the GIL reads, even if the caller's array changes meanwhile."""
    e = np.asarray(ends)
    if e.ndim != 1 or (e.dtype.kind not in "iu" and len(e)):
        raise TypeError(f"ends must be a 1-d integer array, not {e.dtype} of shape {e.shape}")
    if e.dtype.kind == "i" and len(e) and e.min() < 0:
        raise ValueError("chunk ends must not be negative")
    return np.array(e, dtype=np.uint64)


def hash_chunks(buf, ends, Py_ssize_t start=0):
    """BLAKE3-256 of each chunk buf[prev:end], prev being start and then the
    previous end; a (len(ends), 32) uint8 array.

    buf: any C-contiguous buffer (bytes, bytearray, memoryview, numpy array),
    taken as its bytes.  ends: 1-d integer array of non-decreasing end offsets
    (an end equal to the previous one is an empty chunk).  ValueError unless
    0 <= start <= ends[0] <= ... <= ends[-1] <= buf's size in bytes.
    """
    cdef const uint8_t[::1] b = _bytes(buf)
    cdef const uint64_t[::1] e = _ends(ends)
    cdef size_t n = e.shape[0], size = b.shape[0], i
    if start < 0 or <size_t>start > size:
        raise ValueError(f"start {start} is outside the buffer of {size} bytes")
    cdef uint64_t prev = start
    for i in range(n):
        if e[i] < prev:
            raise ValueError(f"chunk end {e[i]} (#{i}) is before the previous end or start {prev}")
        prev = e[i]
    if prev > size:
        raise ValueError(f"last chunk end {prev} is past the buffer of {size} bytes")

    out = np.empty((n, BLAKE3_OUT_LEN), dtype=np.uint8)
    if n == 0:
        return out
    cdef uint8_t[:, ::1] o = out
    cdef const uint8_t *p = _start(b)
    prev = start
    with nogil:
        for i in range(n):
            _hash_one(p + prev, e[i] - prev, &o[i, 0])
            prev = e[i]
    return out


def hash_spans(buf, offsets, lengths):
    """BLAKE3-256 of each span buf[offset:offset + length], in any order and
    overlapping or not (the chunks a read takes from a decoded frame); a
    (len(offsets), 32) uint8 array, with the GIL released once.  A chunk
    checked with the blake3 package gave the GIL up and waited to get it
    back each time: beside a thread running Python, up to a switch interval
    (5 ms) per 64 KiB chunk.  ValueError for a span outside the buffer."""
    cdef const uint8_t[::1] b = _bytes(buf)
    cdef const uint64_t[::1] o = _ends(offsets)
    cdef const uint64_t[::1] n_ = _ends(lengths)
    cdef size_t n = o.shape[0], size = b.shape[0], i
    if n_.shape[0] != n:
        raise ValueError(f"{n_.shape[0]} lengths for {n} offsets")
    for i in range(n):
        if o[i] > size or n_[i] > size - o[i]:
            raise ValueError(f"span {i} [{o[i]}, +{n_[i]}) is outside the buffer of {size} bytes")
    out = np.empty((n, BLAKE3_OUT_LEN), dtype=np.uint8)
    if n == 0:
        return out
    cdef uint8_t[:, ::1] r = out
    cdef const uint8_t *p = _start(b)
    with nogil:
        for i in range(n):
            _hash_one(p + o[i], n_[i], &r[i, 0])
    return out


def hash_chunks_many(list bufs, ends, counts):
    """hash_chunks of many whole buffers (bytes objects) at once, with the
    GIL released once: `ends` and `counts` as _chunker.find_ends_many
    returns them (each buffer's chunk ends, offsets into it, in order).
    One (total, 32) uint8 array of the ids of every chunk, in order."""
    cdef const uint64_t[::1] e = _ends(ends)
    c = np.asarray(counts, dtype=np.int64)
    cdef Py_ssize_t n = len(bufs), i
    if c.ndim != 1 or len(c) != n:
        raise ValueError(f"{len(c)} counts for {n} buffers")
    if len(c) and c.min() < 0:
        raise ValueError("chunk counts must not be negative")
    if int(c.sum()) != e.shape[0]:
        raise ValueError(f"counts add up to {int(c.sum())}, not the {e.shape[0]} ends given")
    cdef const int64_t[::1] cc = np.ascontiguousarray(c)
    cdef size_t pos = 0, j, k
    cdef uint64_t prev
    for i in range(n):
        b = bufs[i]
        if type(b) is not bytes:
            raise TypeError(f"hash_chunks_many takes bytes, not {type(b).__name__}")
        prev = 0
        for k in range(<size_t>cc[i]):
            if e[pos + k] < prev:
                raise ValueError(f"chunk end {e[pos + k]} of buffer {i} is before the previous end {prev}")
            prev = e[pos + k]
        if prev > <uint64_t>PyBytes_GET_SIZE(b):
            raise ValueError(f"chunk end {prev} is past buffer {i} of {PyBytes_GET_SIZE(b)} bytes")
        pos += cc[i]
    out = np.empty((e.shape[0], BLAKE3_OUT_LEN), dtype=np.uint8)
    if e.shape[0] == 0:
        return out
    cdef uint8_t[:, ::1] o = out
    cdef const uint8_t **ptrs = <const uint8_t **>malloc(max(n, 1) * sizeof(uint8_t *))
    if ptrs == NULL:
        raise MemoryError()
    try:
        for i in range(n):
            ptrs[i] = <const uint8_t *>PyBytes_AS_STRING(bufs[i])
        pos = 0
        with nogil:
            for i in range(n):
                prev = 0
                for k in range(<size_t>cc[i]):
                    j = pos + k
                    _hash_one(ptrs[i] + prev, e[j] - prev, &o[j, 0])
                    prev = e[j]
                pos += cc[i]
    finally:
        free(ptrs)
    return out


def sealed_many(list datas, bytes magic, unsigned int version):
    """For each item of `datas`, whether it is a bytes object holding one
    whole envelope (ingest/envelope.py) with this magic and version, a
    length field that matches and a good checksum: the checks unseal()
    makes, for many small objects in one call with the GIL released (a
    tree's re-ingest checks one stored ref per file).  A bytes of 0/1."""
    if len(magic) != 4:
        raise ValueError("an envelope magic is 4 bytes")
    items = tuple(datas)          # what the loop without the GIL reads stays alive
    cdef Py_ssize_t n = len(items), i
    out = bytearray(n)
    cdef unsigned char[::1] o = out
    if n == 0:
        return bytes(out)
    cdef const uint8_t **ptrs = <const uint8_t **>malloc(n * sizeof(uint8_t *))
    cdef size_t *lens = <size_t *>malloc(n * sizeof(size_t))
    if ptrs == NULL or lens == NULL:
        free(ptrs)
        free(lens)
        raise MemoryError()
    cdef const uint8_t *m = <const uint8_t *>PyBytes_AS_STRING(magic)
    cdef blake3_hasher h
    cdef uint8_t sum_[16]
    cdef uint64_t plen
    cdef size_t ln, j
    cdef int good
    try:
        for i in range(n):
            d = items[i]
            if type(d) is bytes:
                ptrs[i] = <const uint8_t *>PyBytes_AS_STRING(d)
                lens[i] = <size_t>PyBytes_GET_SIZE(d)
            else:
                ptrs[i] = NULL
                lens[i] = 0
        with nogil:
            for i in range(n):
                ln = lens[i]
                if ptrs[i] == NULL or ln < 32:
                    continue
                good = 1
                for j in range(4):
                    if ptrs[i][j] != m[j]:
                        good = 0
                if not good or ptrs[i][4] != version:
                    continue
                plen = 0
                for j in range(8):
                    plen |= (<uint64_t>ptrs[i][8 + j]) << (8 * j)
                if plen != ln - 32:
                    continue
                blake3_hasher_init(&h)
                blake3_hasher_update(&h, ptrs[i], ln - 16)
                blake3_hasher_finalize(&h, sum_, 16)
                for j in range(16):
                    if sum_[j] != ptrs[i][ln - 16 + j]:
                        good = 0
                o[i] = good
    finally:
        free(ptrs)
        free(lens)
    return bytes(out)


DEF FANOUT = 64
FILE_ID_FANOUT = FANOUT     # hashing.py checks it is the spec's (hashing.FANOUT)


cdef void _merkle_root(const uint8_t *ids, const uint64_t *lengths, size_t n,
                       uint8_t *scratch, uint8_t *out) noexcept nogil:
    """hashing.file_id of n rows: level-0 nodes over runs of FANOUT (chunk
    id, u64 LE length) rows behind a 0x00 byte, then level k over runs of
    FANOUT child digests behind byte k, to one node.  scratch holds
    ceil(max(n, 1) / FANOUT) digests."""
    cdef blake3_hasher h
    cdef uint8_t prefix
    cdef uint8_t le[8]
    cdef size_t nodes = 0, i, j, end, b, level_n
    cdef uint64_t v
    i = 0
    while True:
        end = i + FANOUT
        if end > n:
            end = n
        prefix = 0
        blake3_hasher_init(&h)
        blake3_hasher_update(&h, &prefix, 1)
        for j in range(i, end):
            blake3_hasher_update(&h, ids + 32 * j, 32)
            v = lengths[j]
            for b in range(8):
                le[b] = (v >> (8 * b)) & 0xFF
            blake3_hasher_update(&h, le, 8)
        blake3_hasher_finalize(&h, scratch + 32 * nodes, 32)
        nodes += 1
        i = end
        if i >= n:
            break
    prefix = 1
    level_n = nodes
    while level_n > 1:
        nodes = 0
        i = 0
        while i < level_n:
            end = i + FANOUT
            if end > level_n:
                end = level_n
            blake3_hasher_init(&h)
            blake3_hasher_update(&h, &prefix, 1)
            blake3_hasher_update(&h, scratch + 32 * i, 32 * (end - i))
            # In place: node `nodes` is written after every child it reads.
            blake3_hasher_finalize(&h, scratch + 32 * nodes, 32)
            nodes += 1
            i = end
        level_n = nodes
        prefix += 1
    for b in range(32):
        out[b] = scratch[b]


def file_ids_many(ids, lengths, counts):
    """hashing.file_id of many files at once, with the GIL released: ids a
    (total, 32) uint8 array and lengths the chunk lengths of every file's
    chunks in order, counts each file's number of chunks.  A list of
    32-byte ids, one per file."""
    i8 = np.ascontiguousarray(ids, dtype=np.uint8)
    if i8.ndim != 2 or i8.shape[1] != 32:
        raise ValueError(f"ids must be (n, 32) bytes, not shape {i8.shape}")
    cdef const uint8_t[:, ::1] iv = i8
    cdef const uint64_t[::1] lv = _ends(lengths)
    c = np.asarray(counts, dtype=np.int64)
    if c.ndim != 1 or (len(c) and c.min() < 0):
        raise ValueError("counts must be a 1-d array of chunk counts")
    if int(c.sum()) != iv.shape[0] or lv.shape[0] != iv.shape[0]:
        raise ValueError(f"counts add up to {int(c.sum())} for {iv.shape[0]} ids and {lv.shape[0]} lengths")
    cdef const int64_t[::1] cc = np.ascontiguousarray(c)
    cdef Py_ssize_t nf = len(c), f
    cdef size_t most = 1
    for f in range(nf):
        if <size_t>cc[f] > most:
            most = cc[f]
    out = np.empty((nf, 32), dtype=np.uint8)
    if nf == 0:
        return []
    cdef uint8_t[:, ::1] o = out
    cdef uint8_t *scratch = <uint8_t *>malloc(32 * ((most + FANOUT - 1) // FANOUT))
    if scratch == NULL:
        raise MemoryError()
    cdef const uint8_t *ip = &_empty[0]
    cdef const uint64_t *lp = <const uint64_t *>&_empty[0]
    if iv.shape[0]:
        ip = &iv[0, 0]
        lp = &lv[0]
    cdef size_t pos = 0
    try:
        with nogil:
            for f in range(nf):
                _merkle_root(ip + 32 * pos, lp + pos, cc[f], scratch, &o[f, 0])
                pos += cc[f]
    finally:
        free(scratch)
    return [r.tobytes() for r in out]


def version():
    """Version of the vendored BLAKE3 C implementation."""
    return blake3_version().decode()


# The C code picks its SIMD path on first use and caches the CPU's features in
# a plain global; hash once here, with the GIL held, so that threads hashing
# at once later only read it.
hash_chunks(b"", np.zeros(1, dtype=np.uint64))
