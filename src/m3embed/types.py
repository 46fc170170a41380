"""The data types that flow through m3embed: one sparse form, one output bundle."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy import sparse as sp

# what M3Output.save writes (meta.json last)
OUTPUT_FILES = ("dense.npy", "sparse.npz", "colbert.npy", "colbert_offsets.npy", "n_tokens.npy", "ids.json",
                "meta.json")


class SparseVector(NamedTuple):
    """Lexical weights of one text: token ids (int32, sorted, unique) and their weights (float32, > 0)."""

    ids: np.ndarray
    weights: np.ndarray

    def to_flag(self) -> dict[str, float]:
        """FlagEmbedding's `lexical_weights` form: `{str(token_id): weight}`."""
        return {str(int(i)): float(w) for i, w in zip(self.ids, self.weights)}

    @classmethod
    def from_flag(cls, weights: dict[str, float]) -> SparseVector:
        ids = np.array([int(k) for k in weights], dtype=np.int32)
        vals = np.array([float(v) for v in weights.values()], dtype=np.float32)
        order = np.argsort(ids, kind="stable")
        keep = vals[order] > 0
        return cls(ids[order][keep], vals[order][keep])

    def __len__(self) -> int:
        return len(self.ids)


def lexical_csr(rows: np.ndarray, ids: np.ndarray, weights: np.ndarray, n: int, vocab: int) -> sp.csr_array:
    """(text, token id, weight) triples → csr_array (n, vocab) of the max weight per (text, id): M3's pooling of
    token weights into lexical weights."""
    keys = rows.astype(np.int64) * vocab + ids
    order = np.lexsort((-weights, keys))  # by key, largest weight first
    first = np.ones(len(order), dtype=bool)
    first[1:] = keys[order][1:] != keys[order][:-1]
    sel = order[first]
    out = sp.csr_array((weights[sel].astype(np.float32), (rows[sel], ids[sel])), shape=(n, vocab))
    out.sort_indices()
    return out


@dataclass
class M3Output:
    """What one encoder pass returns for n texts, in input order.

    Attributes:
        dense: (n, h) float32, L2-normalised; None if not requested.
        sparse: csr_array (n, vocab) float32 of max-pooled lexical weights; None if not requested.
        colbert: n arrays of shape (n_tokens - 1, h) float32, each row L2-normalised; None if not requested.
        n_tokens: (n,) int64, tokens per text after truncation (special tokens included).
    """

    dense: np.ndarray | None = None
    sparse: sp.csr_array | None = None
    colbert: list[np.ndarray] | None = None
    n_tokens: np.ndarray | None = None

    def __len__(self) -> int:
        for part in (self.dense, self.colbert, self.n_tokens):
            if part is not None:
                return len(part)
        return self.sparse.shape[0] if self.sparse is not None else 0

    def sparse_vector(self, i: int) -> SparseVector:
        """Row i of `sparse` as a SparseVector."""
        if self.sparse is None:
            raise ValueError("sparse output was not requested; encode with modes including 'sparse'")
        start, end = self.sparse.indptr[i], self.sparse.indptr[i + 1]
        return SparseVector(
            self.sparse.indices[start:end].astype(np.int32), self.sparse.data[start:end].astype(np.float32)
        )

    def sparse_vectors(self) -> list[SparseVector]:
        return [self.sparse_vector(i) for i in range(len(self))]

    @property
    def lexical_weights(self) -> list[dict[str, float]]:
        """FlagEmbedding-compatible view: one `{str(token_id): weight}` dict per text."""
        return [v.to_flag() for v in self.sparse_vectors()]

    def colbert_flat(self) -> tuple[np.ndarray, np.ndarray]:
        """Compact storage form: all colbert rows stacked (N, h) and offsets (n + 1,) int64."""
        if self.colbert is None:
            raise ValueError("colbert output was not requested; encode with modes including 'colbert'")
        offsets = np.zeros(len(self.colbert) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(c) for c in self.colbert])
        dim = self.colbert[0].shape[1] if self.colbert else 0
        flat = np.concatenate(self.colbert) if self.colbert else np.zeros((0, dim), np.float32)
        return flat, offsets

    @staticmethod
    def colbert_from_flat(flat: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
        return [flat[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]

    def select(self, idx: Sequence[int] | np.ndarray) -> M3Output:
        """The outputs of the texts at positions `idx`, in that order."""
        idx = np.asarray(idx, dtype=np.int64)
        return M3Output(
            dense=None if self.dense is None else self.dense[idx],
            sparse=None if self.sparse is None else self.sparse[idx],
            colbert=None if self.colbert is None else [self.colbert[i] for i in idx],
            n_tokens=None if self.n_tokens is None else self.n_tokens[idx],
        )

    def save(self, directory: str | Path, ids: Sequence[str] | None = None, meta: dict | None = None) -> Path:
        """Write the outputs as files a reader needs only NumPy/SciPy for.

        dense.npy (n, h) float32 · sparse.npz (scipy csr, n × vocab) · colbert.npy (N, h) float32 with
        colbert_offsets.npy (n + 1,) int64, rows of text i = colbert[offsets[i]:offsets[i+1]] ·
        n_tokens.npy · ids.json (list of str) · meta.json (model, modes, counts).

        Free space is checked first (a `m3embed.diskspace.DiskFullError` names the directory and the bytes
        needed); every file is written to a temporary name and renamed when all are written, so a failed save
        leaves no partial file. Output files of modes not saved now (from an earlier save) are removed.
        """
        from m3embed.diskspace import FILE_RESERVE, DiskFullError, check_free, human, is_disk_full

        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise NotADirectoryError(f"{directory} is a file; outputs are saved into a directory")
        ids = [str(i) for i in (ids if ids is not None else range(len(self)))]
        blobs: dict[str, object] = {}
        if self.dense is not None:
            blobs["dense.npy"] = self.dense
        if self.sparse is not None:
            blobs["sparse.npz"] = sp.csr_matrix(self.sparse)
        if self.colbert is not None:
            blobs["colbert.npy"], blobs["colbert_offsets.npy"] = self.colbert_flat()
        if self.n_tokens is not None:
            blobs["n_tokens.npy"] = self.n_tokens
        blobs["ids.json"] = json.dumps(ids, ensure_ascii=False).encode()
        blobs["meta.json"] = (json.dumps({"count": len(self), **(meta or {})}, indent=2) + "\n").encode()
        need = sum(_nbytes(b) for b in blobs.values())
        check_free(directory, need, f"saving {len(self)} outputs", reserve=FILE_RESERVE)
        created = _mkdirs(directory)
        written: list[Path] = []
        try:
            for name, blob in blobs.items():
                tmp = directory / f".{name}.tmp{os.getpid()}"
                written.append(tmp)
                with tmp.open("wb") as f:
                    if isinstance(blob, bytes):
                        f.write(blob)
                    elif isinstance(blob, np.ndarray):
                        np.save(f, blob)
                    else:
                        sp.save_npz(f, blob)
        except OSError as e:
            for tmp in written:
                tmp.unlink(missing_ok=True)
            for d in reversed(created):
                d.rmdir()
            if is_disk_full(e):
                raise DiskFullError(f"no space left saving outputs in {directory} (they take about "
                                    f"{human(need)}); free some space or choose another location",
                                    directory) from None
            raise
        for name in OUTPUT_FILES:  # outputs of an earlier save that this one does not replace
            if name not in blobs:
                (directory / name).unlink(missing_ok=True)
        for name, tmp in zip(blobs, written):  # meta.json last
            os.replace(tmp, directory / name)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> tuple[M3Output, list[str]]:
        """Read what `save` wrote: the outputs and the ids."""
        directory = Path(directory)
        if not (directory / "ids.json").is_file():
            raise FileNotFoundError(f"{directory} holds no saved outputs (ids.json is missing)")
        colbert = None
        if (directory / "colbert.npy").is_file():
            colbert = cls.colbert_from_flat(np.load(directory / "colbert.npy"),
                                            np.load(directory / "colbert_offsets.npy"))
        out = cls(
            dense=np.load(directory / "dense.npy") if (directory / "dense.npy").is_file() else None,
            sparse=sp.csr_array(sp.load_npz(directory / "sparse.npz")) if (directory / "sparse.npz").is_file()
            else None,
            colbert=colbert,
            n_tokens=np.load(directory / "n_tokens.npy") if (directory / "n_tokens.npy").is_file() else None,
        )
        return out, json.loads((directory / "ids.json").read_text())

    @staticmethod
    def concat(parts: Sequence[M3Output]) -> M3Output:
        """Join outputs of consecutive chunks (all parts must hold the same modes)."""
        if not parts:
            return M3Output()
        first = parts[0]
        return M3Output(
            dense=None if first.dense is None else np.concatenate([p.dense for p in parts]),
            sparse=None if first.sparse is None else sp.vstack([p.sparse for p in parts], format="csr"),
            colbert=None if first.colbert is None else [c for p in parts for c in p.colbert],
            n_tokens=None if first.n_tokens is None else np.concatenate([p.n_tokens for p in parts]),
        )


def _nbytes(blob: object) -> int:
    """Bytes a blob takes on disk (an upper bound: npz is compressed)."""
    if isinstance(blob, bytes):
        return len(blob)
    if isinstance(blob, np.ndarray):
        return blob.nbytes + 128  # .npy header
    return blob.data.nbytes + blob.indices.nbytes + blob.indptr.nbytes + 1024  # csr in an npz


def _mkdirs(directory: Path) -> list[Path]:
    """Create `directory` and missing parents; returns the directories created, outermost first."""
    missing = []
    p = directory.absolute()
    while not p.exists():
        missing.append(p)
        p = p.parent
    directory.mkdir(parents=True, exist_ok=True)
    return missing[::-1]


class Hit(NamedTuple):
    """One search result.

    Attributes:
        id: the document's id as given when it was added.
        score: the ranking score (for hybrid modes w_d·dense + w_s·sparse + w_c·colbert, unnormalised).
        text: the stored text, or None when the index keeps no text.
        metadata: the document's metadata dict.
        scores: per-mode scores {"dense", "sparse", "colbert"} when known (single-mode search, or explain=True).
    """

    id: str
    score: float
    text: str | None = None
    metadata: dict | None = None
    scores: dict[str, float] | None = None
