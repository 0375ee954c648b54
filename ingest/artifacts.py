"""Deterministic generators of realistic, versioned hub artifacts.

Used by `ingest demo` (small scales), the tests (tiny scales) and the
benchmarks (scale 1.0 and up).  Each corpus is a sequence of *versions* the
way a hub receives them, so that dedup across versions, and compression within
one, behave roughly as on real uploads:

- ``model``:   a transformer checkpoint in safetensors (fp32), a partial
  fine-tune of it (last third of the layers and every norm changed, the rest
  byte-identical), and bf16 and fp16 conversions of both.
- ``dataset``: three versions of a dataset (JSONL + Parquet of a text table,
  CSV of an events table); each version inserts rows in the middle, edits a
  few rows and appends rows.
- ``package``: four versions of an unpacked binary wheel: ELF-like shared
  objects made of compilation units that mostly persist between versions,
  Python sources with local edits, stubs, configs, data files, dist-info.
- ``random``:  one file of incompressible bytes (the no-dedup, no-compression
  floor).

Nothing here is random bytes pretending to be data: text is Zipf-distributed
pseudo-words, weights are N(0, 0.02)-like floats, code is x86-like instruction
streams built from a skewed template set.  Everything is vectorized with numpy
and pyarrow, and fully determined by ``seed`` (numpy ``default_rng``).

Sizes at ``scale=1.0``: model 64 MiB base fp32 (256 MiB in all six files),
dataset ~32 MiB per version, package ~40 MiB per version, random 64 MiB.
"""
from __future__ import annotations

import base64
import hashlib
import json
import math
import pathlib

import numpy as np

__all__ = ["KINDS", "make_corpus"]

KINDS = ("model", "dataset", "package", "random")

MiB = 1 << 20
KiB = 1 << 10


def make_corpus(kind: str, root: pathlib.Path, scale: float = 1.0, seed: int = 0) -> list[pathlib.Path]:
    """Write the versions of one corpus under `root`; return their top-level paths in version order.

    `kind` is one of KINDS.  `scale` multiplies every size (1.0 is the
    benchmark size; 0.02 makes a corpus of a few MiB for tests).  The same
    (kind, scale, seed) always gives byte-identical files.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown corpus kind {kind!r}; expected one of {', '.join(KINDS)}")
    scale = float(scale)
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    if int(seed) < 0:
        raise ValueError("seed must be non-negative")
    root = pathlib.Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([int(seed), KINDS.index(kind)])
    return _MAKERS[kind](root, scale, rng)


# ---------------------------------------------------------------------------
# Rendering byte strings from tables of pieces, vectorized.
# ---------------------------------------------------------------------------

class _Pieces:
    """A table of byte strings; `render(ids)` concatenates pieces by id with numpy gathers."""

    def __init__(self, items: list[bytes]):
        self.lens = np.fromiter((len(b) for b in items), np.int64, len(items))
        self.offs = np.zeros(len(items), np.int64)
        if len(items) > 1:
            self.offs[1:] = np.cumsum(self.lens)[:-1]
        self.flat = np.frombuffer(b"".join(items) or b"\0", np.uint8)

    def __len__(self) -> int:
        return len(self.lens)

    def render(self, seq: np.ndarray, step: int = 1 << 20) -> np.ndarray:
        seq = np.asarray(seq, np.int64)
        parts = []
        for i in range(0, len(seq), step):
            s = seq[i:i + step]
            lens = self.lens[s]
            ends = np.cumsum(lens)
            total = int(ends[-1])
            src = np.repeat(self.offs[s] - (ends - lens), lens) + np.arange(total, dtype=np.int64)
            parts.append(self.flat[src])
        if not parts:
            return np.empty(0, np.uint8)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _expand(table_flat: np.ndarray, table_offs: np.ndarray, table_lens: np.ndarray,
            choice: np.ndarray) -> np.ndarray:
    """Concatenate variable-length rows of an integer table (same gather as _Pieces.render)."""
    lens = table_lens[choice]
    ends = np.cumsum(lens)
    total = int(ends[-1]) if len(ends) else 0
    src = np.repeat(table_offs[choice] - (ends - lens), lens) + np.arange(total, dtype=np.int64)
    return table_flat[src]


def _zipf_cdf(n: int, a: float = 1.0, q: float = 2.7) -> np.ndarray:
    """CDF of a Zipf-Mandelbrot law over ranks 0..n-1."""
    p = 1.0 / (np.arange(1, n + 1, dtype=np.float64) + q) ** a
    c = np.cumsum(p)
    return c / c[-1]


def _draw(rng: np.random.Generator, cdf: np.ndarray, n: int) -> np.ndarray:
    return np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), len(cdf) - 1)


def _lognormal_counts(rng, n, mean, sigma, lo=1, hi=None) -> np.ndarray:
    mu = math.log(mean) - sigma * sigma / 2
    c = np.rint(rng.lognormal(mu, sigma, n)).astype(np.int64)
    return np.clip(c, lo, hi if hi is not None else np.iinfo(np.int64).max)


# ---------------------------------------------------------------------------
# Pseudo-words and prose.
# ---------------------------------------------------------------------------

_ONSETS = ("", "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w",
           "y", "z", "br", "ch", "cl", "cr", "dr", "fl", "fr", "gr", "pl", "pr", "sh", "sl", "sp",
           "st", "str", "th", "tr", "wh")
_ONSET_W = (6, 3, 4, 4, 2, 2, 3, 1, 1, 4, 4, 4, 3, 3, 5, 6, 1, 2, 1, 1, 1, 2, 1, 1, 1, 1, 1, 1,
            1, 2, 2, 1, 1, 2, 1, 4, 2, 1)
_NUCLEI = ("a", "e", "i", "o", "u", "ai", "ea", "ee", "ie", "oo", "ou", "y")
_NUCLEI_W = (8, 10, 7, 6, 3, 1, 2, 1, 1, 1, 1, 1)
_CODAS = ("", "n", "r", "s", "t", "l", "nd", "st", "ng", "ck", "m", "d", "x", "rt", "ll", "nt")
_CODA_W = (14, 5, 4, 4, 4, 3, 2, 1, 2, 1, 2, 3, 1, 1, 1, 2)


def _pseudo_words(rng: np.random.Generator, n: int) -> list[bytes]:
    """`n` distinct pronounceable pseudo-words, shortest first (frequent words are short)."""
    def pick(options, weights, k):
        w = np.asarray(weights, np.float64)
        return [options[i] for i in rng.choice(len(options), size=k, p=w / w.sum())]

    words: dict[bytes, None] = {}
    while len(words) < n:
        k = 3 * n
        nsyl = rng.choice([1, 2, 3, 4], size=k, p=[0.35, 0.38, 0.2, 0.07])
        total = int(nsyl.sum())
        on, nu, co = pick(_ONSETS, _ONSET_W, total), pick(_NUCLEI, _NUCLEI_W, total), pick(_CODAS, _CODA_W, total)
        pos = 0
        for s in nsyl:
            w = "".join(on[pos + j] + nu[pos + j] + co[pos + j] for j in range(s))
            pos += s
            words.setdefault(w.encode(), None)
    out = list(words)[:n]
    # Frequent ranks get the short words: sort by length with a little noise.
    key = np.array([len(w) for w in out], np.float64) + rng.normal(0, 1.2, len(out))
    return [out[i] for i in np.argsort(key, kind="stable")]


class _Lexicon:
    """Zipf-distributed pseudo-word prose, rendered in bulk."""

    ZIPF = 1.0
    PHRASES = 2000
    PHRASE_SHARE = 0.5  # tuned: prose then gives zstd-3 ~0.30 and hf_xet ~0.58, as real English text
    SEPS = (b" ", b", ", b". ", b"; ", b"? ", b": ")
    SEP_P = (0.855, 0.07, 0.055, 0.006, 0.006, 0.008)
    ENDS = (b".", b"?", b"!")
    END_P = (0.88, 0.07, 0.05)

    def __init__(self, rng: np.random.Generator, n_words: int = 4000, zipf: float = ZIPF,
                 n_phrases: int = PHRASES, phrase_share: float = PHRASE_SHARE):
        self.words = _pseudo_words(rng, n_words)
        # Collocations: recurring 2-4 word phrases ("of the", "in order to"), which give
        # real prose the long repeated matches LZ codecs live on.
        wcdf = self._word_cdf = _zipf_cdf(n_words, zipf)
        plen = rng.choice([2, 3, 4], size=n_phrases, p=[0.5, 0.35, 0.15])
        pw = _draw(rng, wcdf, int(plen.sum()))
        phrases, pos = [], 0
        for k in plen:
            phrases.append(b" ".join(self.words[j] for j in pw[pos:pos + k]))
            pos += k
        tokens = self.words + phrases
        self.n = len(tokens)
        caps = [w[:1].upper() + w[1:] for w in tokens]
        self.pieces = _Pieces(tokens + caps + list(self.SEPS) + list(self.ENDS))
        p = np.concatenate([np.diff(wcdf, prepend=0.0) * (1 - phrase_share),
                            np.diff(_zipf_cdf(n_phrases, 1.0), prepend=0.0) * phrase_share])
        self.cdf = np.cumsum(p) / p.sum()
        self._sep_cdf = np.cumsum(self.SEP_P) / sum(self.SEP_P)
        self._end_cdf = np.cumsum(self.END_P) / sum(self.END_P)

    def word_ids(self, rng, n) -> np.ndarray:
        """Ids of single words (not phrases), Zipf-distributed."""
        return _draw(rng, self._word_cdf, n)

    def sample(self, rng, n) -> np.ndarray:
        return _draw(rng, self.cdf, n)

    def texts(self, rng: np.random.Generator, counts: np.ndarray, end: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """One text per entry of `counts` (its number of words).

        Returns (bytes as uint8 array, offsets of len(counts)+1) -- the layout of
        an Arrow string array.
        """
        counts = np.maximum(np.asarray(counts, np.int64), 1)
        w = int(counts.sum())
        ids = self.sample(rng, w)
        sep = _draw(rng, self._sep_cdf, w)
        last = np.cumsum(counts) - 1
        first = np.zeros(w, bool)
        first[0] = True
        first[last[:-1] + 1] = True
        # capital after a full stop / question mark, and at the start of each text
        first[1:] |= (sep[:-1] == 2) | (sep[:-1] == 4)
        ids = ids + self.n * first
        base = 2 * self.n
        sep_ids = base + sep
        if end:
            sep_ids[last] = base + len(self.SEPS) + _draw(rng, self._end_cdf, len(last))
        else:
            sep_ids[last] = base  # a trailing space, stripped below
        seq = np.empty(2 * w, np.int64)
        seq[0::2] = ids
        seq[1::2] = sep_ids
        data = self.pieces.render(seq)
        ends = np.cumsum(self.pieces.lens[seq])[2 * last + 1]
        if not end:
            # drop the trailing space of each text by compacting it away
            keep = np.ones(len(data), bool)
            keep[ends - 1] = False
            data = data[keep]
            ends = ends - np.arange(1, len(ends) + 1)
        offsets = np.zeros(len(counts) + 1, np.int64)
        offsets[1:] = ends
        return data, offsets


def _string_array(data: np.ndarray, offsets: np.ndarray):
    import pyarrow as pa
    n = len(offsets) - 1
    if offsets[-1] < 2**31 - 1:
        return pa.StringArray.from_buffers(n, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data))
    return pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets.astype(np.int64)), pa.py_buffer(data))


def _strings(lex: _Lexicon, rng, counts, end=True):
    return _string_array(*lex.texts(rng, counts, end=end))


# ---------------------------------------------------------------------------
# model: safetensors checkpoints
# ---------------------------------------------------------------------------

_ST_DTYPE = {"fp32": "F32", "bf16": "BF16", "fp16": "F16"}


def _model_config(scale: float) -> dict:
    target_params = 64 * MiB * scale / 4
    h = 64 * max(1, round(5 * math.sqrt(scale)))
    inter = 32 * max(1, round(h * 2.7 / 32))
    kv = min(h, 64 * max(1, h // 320))
    per_layer = 2 * h * h + 2 * kv * h + 3 * h * inter + 2 * h
    layers = 12
    if layers * per_layer > 0.8 * target_params:
        layers = max(3, int(0.8 * target_params // per_layer))
    vocab = max(256, 64 * round((target_params - layers * per_layer - h) / (2 * h) / 64))
    return {"hidden_size": h, "intermediate_size": inter, "kv_dim": kv,
            "num_hidden_layers": layers, "vocab_size": vocab}


def _model_tensors(cfg: dict) -> list[tuple[str, tuple[int, ...], str, int]]:
    """(name, shape, role, layer) in creation order; layer -1 for non-layer tensors."""
    h, i, kv, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["kv_dim"], cfg["vocab_size"]
    out = [("model.embed_tokens.weight", (v, h), "embed", -1)]
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        out += [
            (p + "input_layernorm.weight", (h,), "norm", layer),
            (p + "self_attn.q_proj.weight", (h, h), "in", layer),
            (p + "self_attn.k_proj.weight", (kv, h), "in", layer),
            (p + "self_attn.v_proj.weight", (kv, h), "in", layer),
            (p + "self_attn.o_proj.weight", (h, h), "out", layer),
            (p + "post_attention_layernorm.weight", (h,), "norm", layer),
            (p + "mlp.gate_proj.weight", (i, h), "in", layer),
            (p + "mlp.up_proj.weight", (i, h), "in", layer),
            (p + "mlp.down_proj.weight", (h, i), "out", layer),
        ]
    out += [("model.norm.weight", (h,), "norm", -1), ("lm_head.weight", (v, h), "head", -1)]
    return out


def _to_bf16(x: np.ndarray) -> np.ndarray:
    """fp32 -> bf16 bits, round to nearest even (what torch's .to(bfloat16) does)."""
    u = x.view(np.uint32)
    return ((u + (((u >> 16) & 1) + np.uint32(0x7FFF))) >> 16).astype(np.uint16)


def _write_safetensors(path: pathlib.Path, tensors: dict[str, np.ndarray], dtype: str, metadata: dict) -> None:
    names = sorted(tensors)  # the safetensors writer orders tensors by name
    header: dict = {"__metadata__": metadata}
    pos = 0
    for name in names:
        t = tensors[name]
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [pos, pos + t.nbytes]}
        pos += t.nbytes
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)  # pad so tensor data starts 8-aligned, as safetensors does
    with open(path, "wb") as f:
        f.write(len(hb).to_bytes(8, "little"))
        f.write(hb)
        for name in names:
            f.write(np.ascontiguousarray(tensors[name]).data)


def _make_model(root: pathlib.Path, scale: float, rng: np.random.Generator) -> list[pathlib.Path]:
    cfg = _model_config(scale)
    n_layers = cfg["num_hidden_layers"]
    spec = _model_tensors(cfg)
    layer_gain = np.exp(rng.normal(0.0, 0.15, n_layers))  # per-layer scale variation
    base: dict[str, np.ndarray] = {}
    for name, shape, role, layer in spec:
        if role == "norm":
            # trained RMSNorm gains: around 1, drifting with depth, per-channel spread
            center = 1.0 + (0.3 * layer / max(1, n_layers - 1) if layer >= 0 else 0.8)
            base[name] = (center + rng.normal(0.0, 0.08, shape)).astype(np.float32)
            continue
        std = 0.02
        if role == "out":
            std = 0.02 / math.sqrt(2 * n_layers)
        if layer >= 0:
            std *= layer_gain[layer]
        w = rng.standard_normal(shape, dtype=np.float32)
        w *= np.float32(std)
        if role in ("in", "out"):
            # a few outlier input channels, as trained transformers have
            cols = rng.choice(shape[1], size=max(1, shape[1] // 128), replace=False)
            w[:, cols] *= np.float32(4.0)
        base[name] = w

    # Partial fine-tune: last third of the layers and every norm move; the rest is untouched.
    first_tuned = n_layers - max(1, n_layers // 3)
    tuned = dict(base)
    for name, shape, role, layer in spec:
        if role == "norm":
            tuned[name] = (base[name] + rng.normal(0.0, 0.01, shape)).astype(np.float32)
        elif layer >= first_tuned:
            delta = rng.standard_normal(shape, dtype=np.float32)
            delta *= np.float32(0.1 * float(base[name].std()))
            tuned[name] = base[name] + delta

    meta_base = {"format": "pt"}
    meta_tuned = {"format": "pt", "base_model": "hub/tiny-base", "finetuned_layers": f"{first_tuned}-{n_layers - 1}"}
    out = []
    for variant, tensors, meta in (("base", base, meta_base), ("finetune", tuned, meta_tuned)):
        for dt in ("fp32", "bf16", "fp16"):
            if dt == "fp32":
                conv = tensors
            elif dt == "bf16":
                conv = {k: _to_bf16(v) for k, v in tensors.items()}
            else:
                conv = {k: v.astype(np.float16) for k, v in tensors.items()}
            p = root / f"model-{variant}.{dt}.safetensors"
            _write_safetensors(p, conv, _ST_DTYPE[dt], meta)
            out.append(p)
    return out


# ---------------------------------------------------------------------------
# dataset: JSONL + Parquet + CSV, three versions
# ---------------------------------------------------------------------------

_T0 = 1_609_459_200  # 2021-01-01T00:00:00Z


class _DatasetGen:
    def __init__(self, rng: np.random.Generator, lex: _Lexicon):
        self.rng = rng
        self.lex = lex
        self.categories = [w.decode() for w in rng.permutation(np.array(lex.words[40:400], object))[:24]]
        self.cat_cdf = _zipf_cdf(len(self.categories), 1.1, 1.0)
        self.langs = ["en", "de", "fr", "es", "pt", "it", "nl", "ja", "zh", "ru"]
        self.lang_cdf = np.cumsum([0.78, 0.04, 0.04, 0.04, 0.03, 0.02, 0.01, 0.02, 0.01, 0.01])
        self.lang_cdf /= self.lang_cdf[-1]
        self.countries = ["US", "GB", "DE", "FR", "IN", "BR", "CA", "JP", "ES", "IT", "NL", "AU",
                          "MX", "KR", "SE", "PL", "TR", "ID", "RU", "CN", "AR", "ZA", "NG", "EG"]
        self.country_cdf = _zipf_cdf(len(self.countries), 1.2, 0.5)
        self.devices = ["desktop", "mobile", "tablet", "tv", "bot"]
        self.device_cdf = np.cumsum([0.46, 0.44, 0.07, 0.02, 0.01])
        self.labels = ["positive", "negative", "neutral", "spam", "unknown", "mixed"]
        self.label_cdf = np.cumsum([0.41, 0.23, 0.27, 0.03, 0.04, 0.02])
        self.user_cdf = _zipf_cdf(50_000, 0.9, 5.0)

    def _pick(self, names, cdf, n):
        import pyarrow as pa
        return pa.DictionaryArray.from_arrays(pa.array(_draw(self.rng, cdf, n), pa.int32()),
                                              pa.array(names)).cast(pa.string())

    def posts(self, n: int, id_start: int, t_start: float):
        """The text table (train.jsonl / train.parquet)."""
        import pyarrow as pa
        import pyarrow.compute as pc
        rng = self.rng
        ts = t_start + np.cumsum(rng.exponential(45.0, n))
        users = _draw(rng, self.user_cdf, n)
        return pa.table({
            "id": pa.array(np.arange(id_start, id_start + n, dtype=np.int64)),
            "created_at": pa.array(ts.astype(np.int64), pa.timestamp("s", tz="UTC")),
            "author": pc.binary_join_element_wise("u/", pc.cast(pa.array(users), pa.string()), ""),
            "category": self._pick(self.categories, self.cat_cdf, n),
            "lang": self._pick(self.langs, self.lang_cdf, n),
            "score": pa.array(np.floor(rng.lognormal(1.2, 1.5, n)).astype(np.int64)),
            "rating": pa.array(np.round(1 + 4 * rng.beta(4, 1.6, n), 1)),
            "title": _strings(self.lex, rng, _lognormal_counts(rng, n, 4, 0.4, 1, 12), end=False),
            "text": _strings(self.lex, rng, _lognormal_counts(rng, n, 40, 0.8, 2, 800)),
        })

    def events(self, n: int, id_start: int, t_start: float):
        """The numeric/categorical table (events.csv)."""
        import pyarrow as pa
        rng = self.rng
        ts = t_start + np.cumsum(rng.exponential(12.0, n))
        price = np.round(rng.lognormal(3.0, 1.0, n), 2)
        return pa.table({
            "event_id": pa.array(np.arange(id_start, id_start + n, dtype=np.int64)),
            "ts": pa.array(ts.astype(np.int64), pa.timestamp("s")),
            "user_id": pa.array(_draw(rng, self.user_cdf, n) + 10_000),
            "country": self._pick(self.countries, self.country_cdf, n),
            "device": self._pick(self.devices, self.device_cdf / self.device_cdf[-1], n),
            "dwell_ms": pa.array(np.rint(rng.lognormal(8.0, 1.1, n)).astype(np.int64)),
            "clicks": pa.array(rng.poisson(1.3, n)),
            "price": pa.array(price, mask=rng.random(n) < 0.35),
            "score": pa.array(np.round(rng.normal(0.0, 1.0, n), 4)),
            "label": self._pick(self.labels, self.label_cdf / self.label_cdf[-1], n),
            "query": _strings(self.lex, rng, _lognormal_counts(rng, n, 2, 0.5, 1, 8), end=False),
        })

    def evolve(self, table, make, id_col: str, ts_col: str):
        """Next version: edit a few rows, insert blocks in the middle, append at the end."""
        import pyarrow as pa
        import pyarrow.compute as pc
        rng = self.rng
        table = table.combine_chunks()
        n = table.num_rows
        next_id = int(pc.max(table[id_col]).as_py()) + 1
        ts = table[ts_col].cast(pa.int64()).to_numpy()

        # edits: a few whole rows rewritten in place, keeping their id and timestamp (each
        # scattered edit costs a chunk, so many of them would turn this into a rewrite)
        k = max(2, n // 5000)
        idx = np.sort(rng.choice(n, size=min(k, n), replace=False))
        repl = make(len(idx), 0, 0.0)
        mask = np.zeros(n, bool)
        mask[idx] = True
        cols = {}
        for name in table.column_names:
            col = table[name].combine_chunks()
            if name in (id_col, ts_col):
                cols[name] = col
            else:
                cols[name] = pc.replace_with_mask(col, pa.array(mask), repl[name].combine_chunks().cast(col.type))
        table = pa.table(cols, schema=table.schema)

        # inserts: two blocks, around 3% of the rows, somewhere in the middle
        pieces, pos = [], 0
        for at in np.sort(rng.integers(int(0.3 * n), max(int(0.3 * n) + 1, int(0.7 * n)), 2)):
            m = max(1, int(n * rng.uniform(0.01, 0.02)))
            block = make(m, next_id, float(ts[min(at, n - 1)]))
            next_id += m
            pieces += [table.slice(pos, at - pos), block.cast(table.schema)]
            pos = at
        pieces.append(table.slice(pos))
        # appends: around 5% newer rows
        m = max(1, int(n * 0.05))
        pieces.append(make(m, next_id, float(ts.max())).cast(table.schema))
        return pa.concat_tables(pieces).combine_chunks()


def _write_jsonl(table, path: pathlib.Path) -> None:
    """JSON lines, built column-wise with Arrow compute (our strings need no escaping)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    parts: list = []
    for i, name in enumerate(table.column_names):
        col = table[name].combine_chunks()
        key = ("{" if i == 0 else ", ") + json.dumps(name) + ": "
        if pa.types.is_timestamp(col.type):
            parts += [key + '"', pc.strftime(col, format="%Y-%m-%dT%H:%M:%SZ"), '"']
        elif pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            parts += [key + '"', col, '"']
        else:
            parts += [key, pc.cast(col, pa.string())]
    parts.append("}\n")
    lines = pc.binary_join_element_wise(*parts, "")
    if isinstance(lines, pa.ChunkedArray):
        lines = lines.combine_chunks()
    offsets = np.frombuffer(lines.buffers()[1], np.int32)[lines.offset:lines.offset + len(lines) + 1]
    with open(path, "wb") as f:
        f.write(memoryview(lines.buffers()[2])[int(offsets[0]):int(offsets[-1])])


def _dataset_card(version: int, posts_rows: int, events_rows: int) -> bytes:
    return (
        "---\nlicense: cc-by-4.0\ntask_categories:\n- text-classification\nlanguage:\n- en\n"
        "configs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train.parquet\n"
        f"---\n\n# Synthetic forum posts (v{version})\n\n"
        f"Posts: {posts_rows} rows in data/train.jsonl and data/train.parquet.\n"
        f"Events: {events_rows} rows in data/events.csv.\n"
    ).encode()


def _make_dataset(root: pathlib.Path, scale: float, rng: np.random.Generator) -> list[pathlib.Path]:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq
    lex = _Lexicon(rng, 4000)
    gen = _DatasetGen(rng, lex)
    n_posts = max(30, int(round(30_500 * scale)))
    n_events = max(30, int(round(111_000 * scale)))
    posts = gen.posts(n_posts, 1_000_000, _T0)
    events = gen.events(n_events, 1, _T0)
    make_posts = lambda n, i, t: gen.posts(n, i, t)  # noqa: E731
    make_events = lambda n, i, t: gen.events(n, i, t)  # noqa: E731
    out = []
    for v in range(1, 4):
        if v > 1:
            posts = gen.evolve(posts, make_posts, "id", "created_at")
            events = gen.evolve(events, make_events, "event_id", "ts")
        d = root / f"dataset-v{v}"
        (d / "data").mkdir(parents=True, exist_ok=True)
        (d / "README.md").write_bytes(_dataset_card(v, posts.num_rows, events.num_rows))
        _write_jsonl(posts, d / "data" / "train.jsonl")
        pq.write_table(posts, d / "data" / "train.parquet")
        pacsv.write_csv(events, d / "data" / "events.csv")
        out.append(d)
    return out


# ---------------------------------------------------------------------------
# package: unpacked binary wheel, four versions
# ---------------------------------------------------------------------------

# byte kinds inside instruction templates
_FIX, _SMALL, _RAND, _SIGN, _ZERO = 0, 1, 2, 3, 4


def _x86_templates(rng: np.random.Generator, k: int = 1400):
    """`k` x86-64-like instruction templates: fixed opcode bytes plus operand slots of given kinds."""
    modrm_ops = [0x89, 0x8B, 0x8D, 0x01, 0x29, 0x31, 0x39, 0x85, 0x3B, 0x23, 0x09, 0x88, 0x63, 0xF7, 0xD1]
    imm8_ops = [0x83, 0xC1, 0xC6]
    imm32_ops = [0x81, 0xC7]
    ops0f = [0x84, 0x85, 0x8F, 0x8E, 0xB6, 0xB7, 0x1F, 0x10, 0x11, 0x28, 0x29, 0x57, 0x58, 0x59, 0xAF,
             0x44, 0x45, 0x94, 0x95]
    rex = [None, 0x48, 0x49, 0x4C, 0x4D, 0x41, 0x44]
    rex_p = np.array([0.4, 0.33, 0.08, 0.08, 0.03, 0.06, 0.02])
    templates: list[tuple[bytes, bytes]] = []

    def modrm(b, kinds):
        mod = rng.choice(4, p=[0.12, 0.45, 0.08, 0.35])
        reg, rm = rng.integers(8), rng.integers(8)
        b.append(int(mod << 6 | reg << 3 | rm))
        kinds.append(_FIX)
        if mod != 3 and rm == 4:
            b.append(int(rng.integers(256)) & 0x3F | 0x20)  # SIB
            kinds.append(_FIX)
        if mod == 1:
            b.append(0)
            kinds.append(_SMALL)
        elif mod == 2 or (mod == 0 and rm == 5):
            b += [0, 0, 0, 0]
            kinds += [_RAND, _SMALL, _ZERO, _ZERO]

    while len(templates) < k:
        b: list[int] = []
        kinds: list[int] = []
        r = rex[rng.choice(len(rex), p=rex_p)]
        if r is not None:
            b.append(r)
            kinds.append(_FIX)
        cls = rng.choice(7, p=[0.5, 0.1, 0.04, 0.08, 0.12, 0.08, 0.08])
        if cls == 0:
            b.append(int(rng.choice(modrm_ops)))
            kinds.append(_FIX)
            modrm(b, kinds)
        elif cls == 1:
            b.append(int(rng.choice(imm8_ops)))
            kinds.append(_FIX)
            modrm(b, kinds)
            b.append(0)
            kinds.append(_SMALL)
        elif cls == 2:
            b.append(int(rng.choice(imm32_ops)))
            kinds.append(_FIX)
            modrm(b, kinds)
            b += [0, 0, 0, 0]
            kinds += [_SMALL, _ZERO, _ZERO, _ZERO]
        elif cls == 3:  # call / jmp rel32
            b += [int(rng.choice([0xE8, 0xE8, 0xE8, 0xE9])), 0, 0, 0, 0]
            kinds += [_FIX, _RAND, _RAND, _SIGN, _SIGN]
        elif cls == 4:  # two-byte opcode
            b += [0x0F, int(rng.choice(ops0f))]
            kinds += [_FIX, _FIX]
            if b[-1] in (0x84, 0x85, 0x8F, 0x8E):
                b += [0, 0, 0, 0]
                kinds += [_RAND, _SMALL, _SIGN, _SIGN]
            else:
                modrm(b, kinds)
        elif cls == 5:  # short jumps
            b += [int(rng.choice([0x74, 0x75, 0xEB, 0x7E, 0x7F, 0x72, 0x73])), 0]
            kinds += [_FIX, _RAND]
        else:  # one-byte: push/pop/mov imm
            op = int(rng.choice([0x50, 0x53, 0x55, 0x58, 0x5B, 0x5D, 0xB8, 0xBA, 0xBE, 0xBF, 0x90, 0xC3]))
            b.append(op + (int(rng.integers(8)) if op in (0x50, 0x58) else 0))
            kinds.append(_FIX)
            if 0xB8 <= op <= 0xBF:
                b += [0, 0, 0, 0]
                kinds += [_SMALL, _ZERO, _ZERO, _ZERO]
        templates.append((bytes(b), bytes(kinds)))
    return templates


class _CodeGen:
    """x86-like machine code: functions of Zipf-drawn instruction templates, 16-byte aligned."""

    IDIOMS = 600
    IDIOM_SHARE = 0.4  # tuned: .so files then compress to ~0.3 with zstd-3, as real ones (0.23-0.41)

    PROLOGUE = (bytes([0x55, 0x48, 0x89, 0xE5, 0x41, 0x57, 0x41, 0x56, 0x53, 0x48, 0x83, 0xEC, 0x00]),
                bytes([0] * 12 + [_SMALL]))
    EPILOGUE = (bytes([0x48, 0x83, 0xC4, 0x00, 0x5B, 0x41, 0x5E, 0x41, 0x5F, 0x5D, 0xC3]),
                bytes([0, 0, 0, _SMALL] + [0] * 7))

    def __init__(self, rng: np.random.Generator, n_idioms: int = IDIOMS, idiom_share: float = IDIOM_SHARE):
        self.small = np.array([8 * i for i in range(1, 17)] + list(range(1, 16)) + [0x20, 0x40, 0x7F, 0xF8, 0xF0],
                              np.uint8)
        basic = _x86_templates(rng)
        # Idioms: short instruction sequences a compiler emits over and over (argument
        # setup, spills, loop heads), operands included -- what makes real .text compress.
        idioms = []
        bcdf = _zipf_cdf(len(basic), 1.1, 3.0)
        for _ in range(n_idioms):
            parts = [basic[i] for i in _draw(rng, bcdf, int(rng.integers(2, 7)))]
            code = np.frombuffer(b"".join(b for b, _ in parts), np.uint8).copy()
            kinds = np.frombuffer(b"".join(k for _, k in parts), np.uint8)
            self._fill(rng, code, kinds)
            idioms.append((code.tobytes(), bytes(len(code))))
        tmpl = basic + idioms
        items = tmpl + [self.PROLOGUE, self.EPILOGUE] + [(b"\xcc" * p, b"\0" * p) for p in range(16)]
        self.n_tmpl = len(tmpl)
        self.code = _Pieces([b for b, _ in items])
        self.kinds = _Pieces([k for _, k in items])
        # draw basic instructions and idioms with Zipf ranks of their own, mixed by `idiom_share`
        p_basic = np.diff(np.concatenate([[0.0], bcdf])) * (1 - idiom_share)
        p_idiom = np.diff(np.concatenate([[0.0], _zipf_cdf(n_idioms, 1.0, 5.0)])) * idiom_share
        self.cdf = np.cumsum(np.concatenate([p_basic, p_idiom]))
        self.cdf /= self.cdf[-1]
        self.mean_func = float(np.dot(np.diff(np.concatenate([[0.0], self.cdf])), self.code.lens[:self.n_tmpl])
                               * 75 + len(self.PROLOGUE[0]) + len(self.EPILOGUE[0]) + 7.5)

    def _fill(self, rng, out: np.ndarray, kinds: np.ndarray) -> None:
        """Operand bytes by kind: small displacements/immediates, random low bytes, sign bytes, mostly-zero."""
        for kind in (_SMALL, _RAND, _SIGN, _ZERO):
            where = np.flatnonzero(kinds == kind)
            if kind == _SMALL:
                v = self.small[rng.integers(0, len(self.small), len(where))]
            elif kind == _RAND:
                v = rng.integers(0, 256, len(where), dtype=np.uint8)
            elif kind == _SIGN:
                v = np.where(rng.random(len(where)) < 0.8, 0, 0xFF).astype(np.uint8)
            else:
                v = np.where(rng.random(len(where)) < 0.9, 0, rng.integers(0, 256, len(where))).astype(np.uint8)
            out[where] = v

    def functions(self, rng: np.random.Generator, n_funcs: int) -> tuple[np.ndarray, np.ndarray]:
        """Code of `n_funcs` functions; returns (bytes, size of each function)."""
        counts = _lognormal_counts(rng, n_funcs, 75, 0.9, 4, 4000)
        body = _draw(rng, self.cdf, int(counts.sum()))
        starts = np.zeros(n_funcs, np.int64)
        starts[1:] = np.cumsum(counts)[:-1]
        lens = np.add.reduceat(self.code.lens[body], starts)
        raw = lens + len(self.PROLOGUE[0]) + len(self.EPILOGUE[0])
        pad = -raw % 16
        seq_len = counts + 3
        seq = np.empty(int(seq_len.sum()), np.int64)
        sstart = np.zeros(n_funcs, np.int64)
        sstart[1:] = np.cumsum(seq_len)[:-1]
        body_pos = np.repeat(sstart + 1 - starts, counts) + np.arange(len(body))
        seq[body_pos] = body
        seq[sstart] = self.n_tmpl
        seq[sstart + counts + 1] = self.n_tmpl + 1
        seq[sstart + counts + 2] = self.n_tmpl + 2 + pad
        out = self.code.render(seq)
        self._fill(rng, out, self.kinds.render(seq))
        return out, raw + pad


class _Unit:
    """One compilation unit of a shared object: its code, function sizes, symbol names and rodata."""
    __slots__ = ("code", "fsizes", "names", "rodata")

    def __init__(self, code: bytes, fsizes: np.ndarray, names: bytes, rodata: bytes):
        self.code, self.fsizes, self.names, self.rodata = code, fsizes, names, rodata


class _SharedObject:
    """An ELF-like .so whose layout follows its units, so local changes stay local (except symbol addresses)."""

    def __init__(self, units: list[_Unit]):
        self.units = units

    def render(self) -> bytes:
        text = b"".join(u.code for u in self.units)
        rodata = b"".join(u.rodata for u in self.units)
        dynstr = b"\0" + b"".join(u.names for u in self.units)
        fsizes = np.concatenate([u.fsizes for u in self.units]).astype(np.uint64)
        name_lens = np.concatenate([np.diff(np.flatnonzero(np.frombuffer(b"\0" + u.names, np.uint8) == 0))
                                    for u in self.units])
        nfunc = len(fsizes)
        page = 4096
        align = lambda x: (x + page - 1) // page * page  # noqa: E731
        ehdr_size, phnum = 64, 4
        dynsym_off = ehdr_size + 56 * phnum
        dynsym_size = 24 * (nfunc + 1)
        dynstr_off = dynsym_off + dynsym_size
        vt_funcs = np.arange(0, nfunc, 9)  # every 9th function sits in a vtable
        rela_off = (dynstr_off + len(dynstr) + 7) // 8 * 8
        rela_size = 24 * len(vt_funcs)
        text_off = align(rela_off + rela_size)
        rodata_off = align(text_off + len(text))
        relro_off = align(rodata_off + len(rodata))
        relro_size = 8 * len(vt_funcs)
        shstr = b"\0.dynsym\0.dynstr\0.rela.dyn\0.text\0.rodata\0.data.rel.ro\0.shstrtab\0"
        shstr_off = relro_off + relro_size
        sh_off = (shstr_off + len(shstr) + 7) // 8 * 8

        faddr = np.zeros(nfunc, np.uint64)
        faddr[1:] = np.cumsum(fsizes)[:-1]
        faddr += np.uint64(text_off)
        sym = np.zeros(nfunc + 1, dtype=[("name", "<u4"), ("info", "u1"), ("other", "u1"), ("shndx", "<u2"),
                                         ("value", "<u8"), ("size", "<u8")])
        name_off = np.ones(nfunc, np.int64)
        name_off[1:] += np.cumsum(name_lens)[:-1]
        sym["name"][1:] = name_off
        sym["info"][1:] = 0x12  # STB_GLOBAL | STT_FUNC
        sym["shndx"][1:] = 4
        sym["value"][1:] = faddr
        sym["size"][1:] = fsizes
        rela = np.zeros(len(vt_funcs), dtype=[("offset", "<u8"), ("info", "<u8"), ("addend", "<u8")])
        rela["offset"] = relro_off + 8 * np.arange(len(vt_funcs), dtype=np.uint64)
        rela["info"] = 8  # R_X86_64_RELATIVE
        rela["addend"] = faddr[vt_funcs]
        relro = faddr[vt_funcs].astype("<u8")

        ehdr = (b"\x7fELF\x02\x01\x01" + b"\0" * 9
                + np.array([3, 0x3E], "<u2").tobytes() + np.array([1], "<u4").tobytes()
                + np.array([text_off, ehdr_size, sh_off], "<u8").tobytes()
                + np.array([0], "<u4").tobytes()
                + np.array([64, 56, phnum, 64, 8, 7], "<u2").tobytes())
        ph = np.zeros(phnum, dtype=[("type", "<u4"), ("flags", "<u4"), ("offset", "<u8"), ("vaddr", "<u8"),
                                    ("paddr", "<u8"), ("filesz", "<u8"), ("memsz", "<u8"), ("align", "<u8")])
        segs = [(0, text_off, 4), (text_off, len(text), 5), (rodata_off, len(rodata), 4),
                (relro_off, relro_size, 6)]
        for i, (off, size, flags) in enumerate(segs):
            ph[i] = (1, flags, off, off, off, size, size, page)
        sections = [  # name offset, type, flags, offset, size, link, entsize
            (0, 0, 0, 0, 0, 0, 0),
            (1, 11, 2, dynsym_off, dynsym_size, 2, 24),
            (9, 3, 2, dynstr_off, len(dynstr), 0, 0),
            (17, 4, 2, rela_off, rela_size, 1, 24),
            (27, 1, 6, text_off, len(text), 0, 0),
            (33, 1, 2, rodata_off, len(rodata), 0, 0),
            (41, 1, 3, relro_off, relro_size, 0, 0),
            (54, 3, 0, shstr_off, len(shstr), 0, 0),
        ]
        sh = np.zeros(len(sections), dtype=[("name", "<u4"), ("type", "<u4"), ("flags", "<u8"), ("addr", "<u8"),
                                            ("offset", "<u8"), ("size", "<u8"), ("link", "<u4"), ("info", "<u4"),
                                            ("align", "<u8"), ("entsize", "<u8")])
        for i, (nm, ty, fl, off, size, link, ent) in enumerate(sections):
            sh[i] = (nm, ty, fl, off if fl else 0, off, size, link, 0, 16 if ty == 1 else 8, ent)

        buf = bytearray(sh_off + sh.nbytes)
        for off, blob in ((0, ehdr), (ehdr_size, ph.tobytes()), (dynsym_off, sym.tobytes()), (dynstr_off, dynstr),
                          (rela_off, rela.tobytes()), (text_off, text), (rodata_off, rodata),
                          (relro_off, relro.tobytes()), (shstr_off, shstr), (sh_off, sh.tobytes())):
            buf[off:off + len(blob)] = blob
        return bytes(buf)


_LICENSE_HEADER = (
    "# Copyright 2021-2024 The Hubkit Authors. All rights reserved.\n"
    "#\n"
    '# Licensed under the Apache License, Version 2.0 (the "License");\n'
    "# you may not use this file except in compliance with the License.\n"
    "# You may obtain a copy of the License at\n"
    "#\n"
    "#     http://www.apache.org/licenses/LICENSE-2.0\n"
    "#\n"
    "# Unless required by applicable law or agreed to in writing, software\n"
    '# distributed under the License is distributed on an "AS IS" BASIS,\n'
    "# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.\n"
    "# See the License for the specific language governing permissions and\n"
    "# limitations under the License.\n"
).encode()

# Python-like line templates: $I identifier, $S sentence, $N number.  (indent, text, weight)
_PY_LINES = (
    (0, "", 14), (4, "", 4),
    (0, "import $I", 2), (0, "from $I.$I import $I, $I", 2), (0, "from .$I import $I", 2),
    (0, "class $I($I):", 1.5), (0, "def $I($I, $I=None):", 1.5), (0, "$I = $N", 1),
    (4, '"""$S"""', 2), (4, "def $I(self, $I, $I=$N):", 4), (4, "def $I(self):", 2), (4, "@property", 1),
    (4, "@staticmethod", 0.5), (4, "$I: $I = $N", 1), (4, "# $S", 2),
    (8, '"""$S', 2), (8, "$S", 4), (8, '"""', 2), (8, "$I = self.$I($I)", 5), (8, "$I = $I.$I($I, $I)", 4),
    (8, "self.$I = $I", 5), (8, "self._$I = $I.$I", 3), (8, "if $I is None:", 3), (8, "return $I", 4),
    (8, "return self._$I", 2), (8, "for $I in $I:", 2), (8, "for $I, $I in enumerate($I):", 1),
    (8, "if not isinstance($I, $I):", 2), (8, "else:", 1.5), (8, "try:", 1), (8, "except $I as exc:", 1),
    (8, "# $S", 3), (8, "assert $I == $N, \"$S\"", 1), (8, "with $I.$I($I) as $I:", 1),
    (8, "$I = [$I($I) for $I in $I]", 1), (8, "$I += $N", 1), (8, "if $I > $N:", 1),
    (12, "raise ValueError(f\"$S {$I}\")", 2), (12, "return $I", 2), (12, "$I = $I($I, $I=$I)", 3),
    (12, "$I.append($I[$N])", 2), (12, "continue", 0.5), (12, "$I[$I] = $I.$I($N)", 2),
    (12, "self.$I.$I($I)", 2), (16, "$I = $I", 1), (16, "break", 0.3),
)

_COMMON_IDENTS = ["self", "x", "i", "data", "value", "name", "config", "kwargs", "args", "result", "out", "np",
                  "torch", "key", "dtype", "shape", "device", "tensor", "path", "fn", "n", "idx", "batch", "cls",
                  "module", "logger", "state", "options", "size", "index", "items", "None", "True", "False", "len"]


class _TextFiles:
    """Python-like source lines in bulk, from line templates with Zipf-drawn identifiers."""

    REUSE = 0.6
    COPY = 0.45  # tuned with REUSE: sources compress to ~0.3 with zstd-3 per file (real: ~0.26)

    def __init__(self, rng: np.random.Generator, lex: _Lexicon):
        words = [w.decode() for w in lex.words]
        idents = list(_COMMON_IDENTS)
        seen = set(idents)
        parts = rng.choice([1, 2, 3], size=6000, p=[0.35, 0.5, 0.15])
        picks = lex.word_ids(rng, int(parts.sum()))
        pos = 0
        for p in parts:
            ident = "_".join(words[j] for j in picks[pos:pos + p])
            pos += p
            if ident not in seen and ident.isidentifier():
                seen.add(ident)
                idents.append(ident)
        self.n_ident = len(idents)
        data, offs = lex.texts(rng, _lognormal_counts(rng, 4000, 8, 0.4, 2, 20))
        sentences = [data[offs[i]:offs[i + 1]].tobytes() for i in range(len(offs) - 1)]
        self.n_sent = len(sentences)
        numbers = [str(v).encode() for v in (list(range(0, 64)) + [128, 255, 256, 512, 1024, 4096, 1e-5, 0.5, -1])]
        self.n_num = len(numbers)

        frags: list[bytes] = []
        tmpl_tokens: list[list[int]] = []
        weights = []
        slot = {"I": -1, "S": -2, "N": -3}
        for indent, text, w in _PY_LINES:
            toks: list[int] = []
            cur = " " * indent
            i = 0
            while i < len(text):
                if text[i] == "$":
                    frags.append(cur.encode())
                    toks.append(len(frags) - 1)
                    toks.append(slot[text[i + 1]])
                    cur = ""
                    i += 2
                else:
                    cur += text[i]
                    i += 1
            frags.append((cur if text else "").encode() + b"\n")
            toks.append(len(frags) - 1)
            tmpl_tokens.append(toks)
            weights.append(w)
        self.n_frag = len(frags)
        self.pieces = _Pieces(frags + [s.encode() for s in idents] + sentences + numbers)
        lens = np.array([len(t) for t in tmpl_tokens], np.int64)
        self.t_flat = np.array([x for t in tmpl_tokens for x in t], np.int64)
        self.t_lens = lens
        self.t_offs = np.concatenate([[0], np.cumsum(lens)[:-1]])
        self.t_cdf = np.cumsum(weights) / np.sum(weights)
        self.ident_cdf = _zipf_cdf(self.n_ident, 1.2, 4.0)
        self.num_cdf = _zipf_cdf(self.n_num, 1.2, 1.0)

    def lines(self, rng: np.random.Generator, nbytes: int) -> bytes:
        """About `nbytes` of newline-terminated Python-like lines."""
        n_lines = max(8, nbytes // 30)
        tmpl = _draw(rng, self.t_cdf, n_lines)
        # Near-duplicate lines: some lines repeat a recent one (resolved to a line that is
        # not itself a copy by pointer jumping), a few of their names changed.
        src = np.arange(n_lines)
        copy = (rng.random(n_lines) < self.COPY) & (src > 0)
        src[copy] = np.maximum(src[copy] - rng.integers(1, 40, int(copy.sum())), 0)
        while True:
            nxt = src[src]
            if np.array_equal(nxt, src):
                break
            src = nxt
        tmpl = tmpl[src]
        seq = _expand(self.t_flat, self.t_offs, self.t_lens, tmpl)
        for code, base, count, cdf in ((-1, self.n_frag, self.n_ident, self.ident_cdf),
                                       (-2, self.n_frag + self.n_ident, self.n_sent, None),
                                       (-3, self.n_frag + self.n_ident + self.n_sent, self.n_num, self.num_cdf)):
            where = np.flatnonzero(seq == code)
            if cdf is None:
                ids = rng.integers(0, count, len(where))
            else:
                ids = _draw(rng, cdf, len(where))
            if code == -1:
                # locality: code keeps reusing the names it just used
                back = np.maximum(np.arange(len(ids)) - rng.integers(1, 25, len(ids)), 0)
                reuse = rng.random(len(ids)) < self.REUSE
                ids[reuse] = ids[back[reuse]]
            seq[where] = base + ids
        ntok = self.t_lens[tmpl]
        tok_start = np.cumsum(ntok) - ntok
        line_of = np.repeat(np.arange(n_lines), ntok)
        copied = copy[line_of]
        copied &= ~((seq >= self.n_frag) & (seq < self.n_frag + self.n_ident) & (rng.random(len(seq)) < 0.25))
        pos = np.flatnonzero(copied)
        seq[pos] = seq[tok_start[src[line_of[pos]]] + (pos - tok_start[line_of[pos]])]
        return self.pieces.render(seq).tobytes()


class _LinePool:
    """Hands out whole lines from a generated stream, refilling it as needed."""

    def __init__(self, rng, src: _TextFiles, chunk: int):
        self.rng, self.src, self.chunk = rng, src, chunk
        self.buf, self.pos = b"", 0

    def take(self, nbytes: int) -> bytes:
        while len(self.buf) - self.pos < nbytes + 4096:
            self.buf = self.buf[self.pos:] + self.src.lines(self.rng, max(self.chunk, 2 * nbytes))
            self.pos = 0
        end = self.buf.find(b"\n", self.pos + max(1, nbytes) - 1) + 1
        out = self.buf[self.pos:end]
        self.pos = end
        return out


def _edit_lines(rng, content: bytes, pool: _LinePool, hunks: int) -> bytes:
    """Replace a few line ranges of `content` with new lines (local source edits)."""
    nl = np.flatnonzero(np.frombuffer(content, np.uint8) == 10)
    if len(nl) < 4:
        return content + pool.take(200)
    cuts = np.sort(rng.choice(len(nl) - 1, size=min(hunks, len(nl) - 1), replace=False))
    pieces, prev = [], 0
    for c in cuts:
        start = int(nl[c]) + 1
        if start < prev:
            continue
        drop = int(rng.integers(0, 12))
        stop = int(nl[min(c + drop, len(nl) - 1)]) + 1 if drop else start
        pieces += [content[prev:start], pool.take(int(rng.integers(30, 900)))]
        prev = stop
    pieces.append(content[prev:])
    return b"".join(pieces)


class _Package:
    """State of the package between versions: path -> bytes or _SharedObject."""

    def __init__(self, root: pathlib.Path, scale: float, rng: np.random.Generator):
        self.root, self.scale, self.rng = root, scale, rng
        self.lex = _Lexicon(rng, 4000)
        self.code = _CodeGen(rng)
        self.src = _TextFiles(rng, self.lex)
        self.pool = _LinePool(rng, self.src, max(64 * KiB, int(2 * MiB * scale)))
        self.words = [w.decode() for w in self.lex.words if 3 <= len(w) <= 9]
        self.name_pieces = None
        self.messages: _Pieces | None = None
        self._init_names()
        self.files: dict[str, object] = {}
        self.version = (1, 0, 0)
        self._initial()

    # -- symbol names --------------------------------------------------------
    def _init_names(self):
        words = [w.encode() for w in self.words[:2500]]
        ns = [b"hubkit", b"detail", b"native", b"kernels", b"ops", b"cpu", b"impl", b"at", b"c10", b"std"]
        suffix = [b"Ev", b"Ei", b"EPKc", b"ERKNS_6TensorE", b"El", b"EPvm", b"ERKS_", b"EPKfS3_Pfl", b"Eb",
                  b"EOS_", b"ERKNSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEE", b"EPKhm"]
        items = [b"_ZN"] + [str(len(w)).encode() + w for w in ns] + [str(len(w)).encode() + w for w in words]
        self.sym_base = len(items)
        items += [s + b"\0" for s in suffix]
        self.name_pieces = _Pieces(items)
        self.n_ns, self.n_sw, self.n_suffix = len(ns), len(words), len(suffix)
        self.sym_cdf = _zipf_cdf(self.n_sw, 0.9, 10.0)
        self.ns_cdf = _zipf_cdf(self.n_ns, 1.0, 1.0)
        self.suffix_cdf = _zipf_cdf(self.n_suffix, 1.0, 1.0)

    def _names(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """`n` mangled C++ names, NUL-terminated; returns (bytes, per-name byte counts)."""
        rng = self.rng
        k = rng.choice([1, 2, 3], size=n, p=[0.3, 0.5, 0.2])
        per = 3 + k
        seq = np.empty(int(per.sum()), np.int64)
        start = np.zeros(n, np.int64)
        start[1:] = np.cumsum(per)[:-1]
        seq[start] = 0
        seq[start + 1] = 1 + _draw(rng, self.ns_cdf, n)
        mid = np.repeat(start + 2, k) + (np.arange(int(k.sum())) - np.repeat(np.cumsum(k) - k, k))
        seq[mid] = 1 + self.n_ns + _draw(rng, self.sym_cdf, len(mid))
        seq[start + per - 1] = self.sym_base + _draw(rng, self.suffix_cdf, n)
        data = self.name_pieces.render(seq)
        ends = np.cumsum(self.name_pieces.lens[seq])[start + per - 1]
        return data, np.diff(np.concatenate([[0], ends]))

    # -- shared objects ------------------------------------------------------
    def _rodata(self, nbytes: int) -> bytes:
        """Messages from the library's own message set, jump tables, and a constant table now and then."""
        rng = self.rng
        if self.messages is None:
            data, offs = self.lex.texts(rng, _lognormal_counts(rng, 3000, 7, 0.6, 1, 30))
            self.messages = _Pieces([data[offs[i]:offs[i + 1]].tobytes() + b"\0" for i in range(3000)])
        n_msg = max(1, int(nbytes * 0.6) // 45)
        out = [self.messages.render(rng.integers(0, len(self.messages), n_msg)).tobytes()]
        out.append(b"\0" * (-len(out[0]) % 16))
        # switch jump tables: int32 offsets relative to the table, small and negative
        n_jt = max(1, int(nbytes * 0.4) // 4)
        jt = -(np.cumsum(rng.integers(0, 0x60, n_jt)) % 0x8000 + 0x40)
        out.append(jt.astype("<i4").tobytes())
        if rng.random() < 0.3:
            out.append((rng.standard_normal(int(rng.integers(16, 256))).astype(np.float32) * 0.5).tobytes())
        return b"".join(out)

    def _units(self, sizes: list[int]) -> list[_Unit]:
        """New compilation units of about the given code sizes, generated in one batch."""
        nf = [max(1, round(s / self.code.mean_func)) for s in sizes]
        code, fsizes = self.code.functions(self.rng, sum(nf))
        names, name_lens = self._names(sum(nf))
        fends = np.concatenate([[0], np.cumsum(fsizes)])
        nends = np.concatenate([[0], np.cumsum(name_lens)])
        units, f = [], 0
        for s, k in zip(sizes, nf):
            units.append(_Unit(code[fends[f]:fends[f + k]].tobytes(), fsizes[f:f + k].copy(),
                               names[nends[f]:nends[f + k]].tobytes(), self._rodata(max(64, s // 5))))
            f += k
        return units

    def _unit_sizes(self, total: int) -> list[int]:
        n = max(1, round(total / (40 * KiB)))
        sizes = _lognormal_counts(self.rng, n, total / n, 0.8, 1024)
        return [int(x) for x in sizes * (total / sizes.sum())]

    def _new_so(self, nbytes: int) -> _SharedObject:
        code_bytes = int(nbytes * 0.72)  # the rest is rodata, symbols, relocations, headers
        return _SharedObject(self._units(self._unit_sizes(code_bytes)))

    def _evolve_so(self, so: _SharedObject) -> None:
        rng = self.rng
        units = so.units
        n = len(units)
        mod = rng.random(n) < 0.06
        mod[rng.integers(n)] = True  # a release always recompiles something
        dele = (rng.random(n) < 0.01) & ~mod
        ins = rng.random(n) < 0.02
        want = [int(len(u.code) * rng.uniform(0.9, 1.15)) for u, m in zip(units, mod) if m]
        want += [int(s) for s in _lognormal_counts(rng, int(ins.sum()), 30 * KiB, 0.8, 1024)]
        fresh = iter(self._units(want)) if want else iter(())
        new_units = []
        for u, m, d in zip(units, mod, dele):
            if d:
                continue
            if m:
                nu = next(fresh)
                # a recompiled unit keeps most of its strings
                if rng.random() < 0.7:
                    nu.rodata = u.rodata
                new_units.append(nu)
            else:
                new_units.append(u)
        pos = np.sort(rng.integers(0, len(new_units) + 1, int(ins.sum())))[::-1]
        for p in pos:
            new_units.insert(int(p), next(fresh))
        so.units = new_units

    # -- the tree ------------------------------------------------------------
    @property
    def vstr(self) -> str:
        return ".".join(map(str, self.version))

    def _py_file(self, nbytes: int) -> bytes:
        return _LICENSE_HEADER + b"\n" + self.pool.take(nbytes)

    def _json_file(self) -> bytes:
        rng = self.rng
        keys = [self.words[i] for i in rng.integers(0, min(800, len(self.words)), int(rng.integers(8, 80)))]
        d = {}
        for k in keys:
            r = rng.random()
            d[k] = (int(rng.integers(0, 4096)) if r < 0.4 else round(float(rng.normal()), 4) if r < 0.6
                    else bool(rng.random() < 0.5) if r < 0.7 else " ".join(
                        self.words[j] for j in rng.integers(0, 500, int(rng.integers(1, 6)))))
        return (json.dumps(d, indent=2, sort_keys=True) + "\n").encode()

    def _vocab_file(self, nbytes: int) -> bytes:
        rng = self.rng
        n = max(10, nbytes // 18)
        data, offs = self.lex.texts(rng, np.full(n, 1), end=False)
        counts = np.sort(np.floor(rng.pareto(1.1, n) * 50).astype(np.int64))[::-1]
        lines = [data[offs[i]:offs[i + 1]].tobytes() + b"\t%d\n" % c for i, c in zip(range(n), counts)]
        return b"".join(lines)

    def _npy_file(self, nbytes: int) -> bytes:
        import io
        arr = (self.rng.standard_normal(max(16, nbytes // 4)).astype(np.float32) * 0.1)
        buf = io.BytesIO()
        np.save(buf, arr)
        return buf.getvalue()

    def _initial(self) -> None:
        s, rng = self.scale, self.rng
        f = self.files
        f["hubkit/_C.cpython-311-x86_64-linux-gnu.so"] = self._new_so(int(20 * MiB * s))
        f["hubkit/lib/libhubkit_core.so"] = self._new_so(int(9 * MiB * s))
        f["hubkit/lib/libgomp-a34b3233.so.1"] = self._new_so(int(1.5 * MiB * s)).render()  # vendored, frozen
        for name, size in (("_fused", 1.5), ("_sparse", 0.8), ("_io", 0.4)):
            f[f"hubkit/{name}.cpython-311-x86_64-linux-gnu.so"] = self._new_so(int(size * MiB * s))
        subpkgs = ["nn", "ops", "utils", "data", "models", "io", "distributed", "testing"]
        n_py = max(6, int(500 * s))
        sizes = _lognormal_counts(rng, n_py, 13 * KiB, 1.0, 300, 400 * KiB)
        for i, size in enumerate(sizes):
            sub = subpkgs[i % len(subpkgs)]
            f[f"hubkit/{sub}/{self.words[i % len(self.words)]}_{i}.py"] = self._py_file(int(size))
        for sub in subpkgs:
            f[f"hubkit/{sub}/__init__.py"] = self._py_file(400)
        for i in range(max(2, int(25 * s))):
            f[f"hubkit/{subpkgs[i % len(subpkgs)]}/{self.words[i + 500]}.pyi"] = self.pool.take(
                int(rng.integers(500, 12 * KiB)))
        for i in range(max(2, int(20 * s))):
            f[f"hubkit/configs/{self.words[i + 900]}.json"] = self._json_file()
        f["hubkit/data/vocab.txt"] = self._vocab_file(int(1.5 * MiB * s))
        f["hubkit/data/tables.npy"] = self._npy_file(int(1 * MiB * s))
        f["hubkit/py.typed"] = b""

    def evolve(self) -> None:
        rng = self.rng
        major, minor, patch = self.version
        self.version = (major, minor + 1, 0)
        for path in sorted(self.files):
            item = self.files[path]
            if isinstance(item, _SharedObject):
                self._evolve_so(item)
            elif path.endswith(".py"):
                if rng.random() < 0.2:
                    self.files[path] = _edit_lines(rng, item, self.pool, int(rng.integers(1, 5)))
                elif rng.random() < 0.01 and not path.endswith("__init__.py"):
                    del self.files[path]
            elif path.endswith(".pyi") and rng.random() < 0.1:
                self.files[path] = _edit_lines(rng, item, self.pool, 1)
            elif path.endswith(".json") and rng.random() < 0.1:
                self.files[path] = self._json_file()
        n_new = max(1, int(0.02 * sum(p.endswith(".py") for p in self.files)))
        for i in range(n_new):
            j = int(rng.integers(len(self.words)))
            self.files[f"hubkit/ops/{self.words[j]}_v{self.version[1]}_{i}.py"] = self._py_file(
                int(_lognormal_counts(rng, 1, 10 * KiB, 0.8, 300)[0]))
        vocab = self.files["hubkit/data/vocab.txt"]
        self.files["hubkit/data/vocab.txt"] = vocab + self._vocab_file(max(64, len(vocab) // 25))
        if self.version[1] == 2:
            self.files["hubkit/data/tables.npy"] = self._npy_file(len(self.files["hubkit/data/tables.npy"]))

    def write(self) -> pathlib.Path:
        top = self.root / f"package-{self.vstr}"
        contents: dict[str, bytes] = {}
        for path, item in self.files.items():
            contents[path] = item.render() if isinstance(item, _SharedObject) else item
        ver = self.vstr
        contents["hubkit/__init__.py"] = (_LICENSE_HEADER + b'\n"""Hubkit: synthetic package."""\n\n'
                                          + f'__version__ = "{ver}"\n'.encode()
                                          + b"".join(f"from . import {s}\n".encode() for s in
                                                     ("nn", "ops", "utils", "data", "models", "io")))
        contents["hubkit/version.py"] = (f'__version__ = "{ver}"\ngit_version = "'
                                         f'{hashlib.sha1(ver.encode()).hexdigest()}"\n').encode()
        di = f"hubkit-{ver}.dist-info"
        contents[f"{di}/METADATA"] = (
            f"Metadata-Version: 2.1\nName: hubkit\nVersion: {ver}\nSummary: Synthetic native package\n"
            "Requires-Python: >=3.9\nLicense: Apache-2.0\nRequires-Dist: numpy>=1.24\n"
            "Requires-Dist: typing-extensions>=4.8\n\n").encode() + self.pool.take(6 * KiB)
        contents[f"{di}/WHEEL"] = (b"Wheel-Version: 1.0\nGenerator: bdist_wheel (0.43.0)\nRoot-Is-Purelib: false\n"
                                   b"Tag: cp311-cp311-manylinux_2_17_x86_64\nTag: cp311-cp311-manylinux2014_x86_64\n")
        contents[f"{di}/top_level.txt"] = b"hubkit\n"
        contents[f"{di}/LICENSE"] = _LICENSE_HEADER.replace(b"# ", b"").replace(b"#", b"") * 8
        record = []
        for path in sorted(contents):
            digest = base64.urlsafe_b64encode(hashlib.sha256(contents[path]).digest()).rstrip(b"=").decode()
            record.append(f"{path},sha256={digest},{len(contents[path])}\n")
        record.append(f"{di}/RECORD,,\n")
        contents[f"{di}/RECORD"] = "".join(record).encode()
        for path in sorted(contents):
            p = top / path
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(contents[path])
        return top


def _make_package(root: pathlib.Path, scale: float, rng: np.random.Generator) -> list[pathlib.Path]:
    pkg = _Package(root, scale, rng)
    out = [pkg.write()]
    for _ in range(3):
        pkg.evolve()
        out.append(pkg.write())
    return out


# ---------------------------------------------------------------------------
# random
# ---------------------------------------------------------------------------

def _make_random(root: pathlib.Path, scale: float, rng: np.random.Generator) -> list[pathlib.Path]:
    total = max(1, int(64 * MiB * scale))
    path = root / "random.bin"
    with open(path, "wb") as f:
        for off in range(0, total, 16 * MiB):
            f.write(rng.bytes(min(16 * MiB, total - off)))
    return [path]


_MAKERS = {"model": _make_model, "dataset": _make_dataset, "package": _make_package, "random": _make_random}
