"""The compiled artifact: a folder holding the library and a manifest.

    out/
      model.so          the compiled module (TVM Relax VM executable; its signature embedded)
      manifest.json     what was built, from what, with what — and the sha256 of every file
      optc-run          arm64 targets: the native runner (``optc/native``), with the TVM
      libtvm_*.so       runtime libraries it links, so the folder runs on a board without Python

The folder is written atomically (``optc.fileio``): everything goes into a temp folder beside
the destination, which is renamed into place only when complete, so a failed compile never
leaves a half-written artifact and never destroys the previous one. An existing folder is
replaced only when it is an optc artifact (or empty).

Loading verifies before it trusts: the manifest's types, every file's size and sha256, the
library path confined to the folder, the TVM versions, the CPU the code needs, and that the
manifest's signature is the one embedded in the library. Checksums catch corruption and edits;
they are not a signature against a malicious author — run artifacts you trust.
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
from pathlib import Path
from typing import Any

from ..fileio import sha256_file
from ..ir.errors import InvalidValueError
from .signature import ArtifactError, Signature

FORMAT = "optc-artifact/2"
LIBRARY = "model.so"
MANIFEST = "manifest.json"
RUNNER = "optc-run"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

__all__ = ["Artifact", "ArtifactError", "FORMAT", "LIBRARY", "MANIFEST", "load", "read_manifest", "write_artifact",
           "file_fingerprint", "check_source_model"]


def _digest(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def file_fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """sha256 and size of a model file (and of its external data files, for ONNX)."""
    path = Path(path)
    files = [path] + sorted(path.parent.glob(path.name + ".data"))
    return {"path": str(path.resolve()), "files": {f.name: _digest(f) for f in files}}


def versions() -> dict[str, str]:
    import tvm

    from .. import __version__

    return {"optc": __version__, "tvm": tvm.__version__, "tvm_ffi": _tvm_ffi_version(),
            "python": platform.python_version()}


def _tvm_ffi_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("apache-tvm-ffi")
    except metadata.PackageNotFoundError:
        return "unknown"


def write_artifact(compiled, out_dir: str | os.PathLike, *, model: str | os.PathLike | None = None,
                   pipeline: str | None = None, reports: list | None = None,
                   tokenizer: str | os.PathLike | None = None) -> Path:
    """Write ``compiled`` (a ``codegen.build.CompiledModule``) as an artifact folder; with
    ``tokenizer`` (a Hugging Face tokenizer or model folder) its tokenizer files go along, so
    ``optc generate`` takes text."""
    import shutil

    from ..fileio import atomic_path, check_output_dir

    out = check_output_dir(out_dir)
    shipped_tokenizer = tokenizer_files(tokenizer) if tokenizer is not None else []
    with atomic_path(out, folder=True) as tmp:
        compiled.export(tmp / LIBRARY)
        files = {LIBRARY: _digest(tmp / LIBRARY)}
        for f in shipped_tokenizer:
            shutil.copyfile(f, tmp / f.name)
            files[f.name] = _digest(tmp / f.name)
        runner = None
        runner_arch = compiled.target.extra.get("native_runner") if compiled.target is not None else None
        if runner_arch:
            from ..native import ship_runtime

            shipped = ship_runtime(runner_arch, tmp)
            files.update({name: _digest(tmp / name) for name in shipped})
            runner = {"program": shipped[0], "libs": shipped[1:], "arch": runner_arch}
        manifest = {
            "format": FORMAT,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **compiled.signature.to_json(),
            "library": LIBRARY,
            "files": files,
            "runner": runner,
            "versions": versions(),
            "model": file_fingerprint(model) if model is not None else None,
            "pipeline": pipeline,
            "passes": reports or [],
            "tokenizer": [f.name for f in shipped_tokenizer],
            "codegen": _codegen_pipeline(compiled.target),
            "build": {"seconds": compiled.timings, "fallback_scheduled": compiled.fallback_funcs,
                      "unscheduled": compiled.unscheduled, "notes": list(compiled.notes),
                      "tuned": list(getattr(compiled, "tuned", [])), "buckets": list(getattr(compiled, "buckets", []))},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        _usual_permissions(tmp)
    return out


_TOKENIZER_FILE = re.compile(r"tokenizer[\w.-]*\.(json|model|txt)|special_tokens_map\.json|added_tokens\.json|"
                             r"vocab\.(json|txt)|merges\.txt|spiece\.model|chat_template\.(json|jinja)")


def tokenizer_files(folder: str | os.PathLike) -> list[Path]:
    """The tokenizer files of a Hugging Face folder (not its weights or config): what an
    artifact carries to turn text into token ids and back."""
    path = Path(folder)
    if not path.is_dir():
        raise ArtifactError(f"{folder}: no such tokenizer folder")
    found = sorted(f for f in path.iterdir() if f.is_file() and _TOKENIZER_FILE.fullmatch(f.name))
    if not any(f.name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model")
               for f in found):
        raise ArtifactError(f"{folder}: not a Hugging Face tokenizer folder (no tokenizer.json, "
                            "tokenizer_config.json or vocabulary)")
    return found


def _codegen_pipeline(target) -> dict:
    """The kernel choices that ran: optc's Relax passes and schedule rules for this target."""

    def names(items):
        return [type(x).__name__ if not hasattr(x, "info") else str(x.info.name) for x in items]

    return {"relax_passes": names(target.relax_passes()), "schedule_rules": names(target.schedule_rules()),
            "fallback": type(target.fallback_rule()).__name__}


def _usual_permissions(folder: Path) -> None:
    """Temp files and folders are created private; the artifact gets the umask's defaults."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for f in folder.iterdir():
        executable = f.suffix == ".so" or f.name == RUNNER
        os.chmod(f, (0o777 if executable else 0o666) & ~umask)


# -- reading and verifying ----------------------------------------------------------------------
def read_manifest(folder: str | os.PathLike) -> dict:
    """The manifest of an artifact folder, with its structure checked (types, file names)."""
    folder = Path(folder)
    if not folder.exists():
        raise ArtifactError(f"{folder}: no such artifact folder")
    if not folder.is_dir():
        raise ArtifactError(f"{folder}: not an artifact folder (a file)")
    path = folder / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{folder}: not an optc artifact ({MANIFEST} is missing)")
    try:
        manifest = json.loads(path.read_bytes())
    except ValueError as e:
        raise ArtifactError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:
        raise ArtifactError(f"{path}: cannot be read ({e.strerror})") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path}: not a manifest (a JSON object is expected)")
    fmt = manifest.get("format")
    if fmt != FORMAT:
        raise ArtifactError(f"{folder}: artifact format {fmt!r} is not {FORMAT!r}: recompile it with this optc")
    _check_manifest(manifest, path)
    return manifest


def _check_manifest(m: dict, path: Path) -> None:
    def expect(cond: bool, msg: str) -> None:
        if not cond:
            raise ArtifactError(f"{path}: {msg}")

    library = m.get("library")
    expect(isinstance(library, str) and _plain_name(library), f"'library' must be a file name inside the folder, got {library!r}")
    files = m.get("files")
    expect(isinstance(files, dict) and files, "'files' must map file names to their sha256 and size")
    for name, d in files.items():
        expect(_plain_name(name), f"'files' names {name!r}, which is not a file name inside the folder")
        expect(isinstance(d, dict) and isinstance(d.get("sha256"), str) and bool(_SHA256.match(d["sha256"]))
               and isinstance(d.get("bytes"), int) and not isinstance(d.get("bytes"), bool) and d["bytes"] >= 0,
               f"'files'[{name!r}] must hold a sha256 hex digest and a byte count")
    expect(library in files, f"the library {library!r} has no checksum in 'files'")
    runner = m.get("runner")
    expect(runner is None or (isinstance(runner, dict) and runner.get("program") in files
                              and isinstance(runner.get("libs"), list) and all(lib in files for lib in runner["libs"])
                              and isinstance(runner.get("arch"), str)),
           "'runner' must be null or name its program and libraries, each listed in 'files'")
    expect(isinstance(m.get("versions"), dict) and isinstance(m["versions"].get("tvm"), str),
           "'versions' must record the TVM version")
    model = m.get("model")
    expect(model is None or (isinstance(model, dict) and isinstance(model.get("path"), str)
                             and isinstance(model.get("files"), dict)), "'model' must be null or record the source model")
    for key, kind in (("passes", list), ("build", dict), ("codegen", dict)):
        expect(m.get(key) is None or isinstance(m.get(key), kind), f"{key!r} must be a {kind.__name__}")
    expect(m.get("pipeline") is None or isinstance(m.get("pipeline"), str), "'pipeline' must be a string")
    tok = m.get("tokenizer") or []
    expect(isinstance(tok, list) and all(isinstance(n, str) and n in files for n in tok),
           "'tokenizer' must list tokenizer files, each listed in 'files'")
    try:
        Signature.from_json(m)
    except ArtifactError as e:
        raise ArtifactError(f"{path}: {e}") from None


def _plain_name(name: str) -> bool:
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name
            and "\0" not in name)


def verify_files(folder: Path, manifest: dict) -> None:
    """Every file the manifest lists exists inside ``folder`` with its recorded size and sha256."""
    root = folder.resolve()
    for name, d in manifest["files"].items():
        f = folder / name
        if f.is_symlink() or not f.resolve().is_relative_to(root):
            raise ArtifactError(f"{folder}: {name} points outside the artifact folder")
        if not f.is_file():
            raise ArtifactError(f"{folder}: {name} is missing")
        size = f.stat().st_size
        if size != d["bytes"]:
            raise ArtifactError(f"{folder}: {name} is {size} bytes, the manifest says {d['bytes']} "
                                "(truncated or replaced): recompile it")
        if sha256_file(f) != d["sha256"]:
            raise ArtifactError(f"{folder}: {name} does not match its sha256 in the manifest (corrupt or edited): "
                                "recompile it")


def check_versions(folder: Path, manifest: dict) -> None:
    import tvm

    built = manifest["versions"]
    if built.get("tvm") != tvm.__version__:
        raise ArtifactError(f"{folder} was built with TVM {built.get('tvm')}; this runtime is TVM {tvm.__version__}: "
                            "recompile it")
    ffi = built.get("tvm_ffi")
    if ffi is not None and ffi != _tvm_ffi_version():
        raise ArtifactError(f"{folder} was built with apache-tvm-ffi {ffi}; this runtime has {_tvm_ffi_version()}: "
                            "recompile it")


def check_source_model(manifest: dict) -> Path:
    """The source model the artifact was compiled from, verified unchanged (for comparisons)."""
    model = manifest.get("model")
    if not model:
        raise ArtifactError("the manifest records no source model")
    path = Path(model["path"])
    if not path.is_file():
        raise ArtifactError(f"the source model {path} recorded in the manifest is not available")
    for name, d in model["files"].items():
        f = path.parent / name
        if not _plain_name(name) or not isinstance(d, dict) or not f.is_file() or sha256_file(f) != d.get("sha256"):
            raise ArtifactError(f"the source model {path} changed since the artifact was built ({name} differs): "
                                "recompile, or compare against the original file")
    return path


class Artifact:
    """A loaded artifact: ``run({name: ndarray}) -> {name: ndarray}`` plus its manifest."""

    def __init__(self, folder: str | os.PathLike):
        from .runtime import CompiledModel, host_problem, open_vm, read_signature

        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        verify_files(self.folder, self.manifest)
        check_versions(self.folder, self.manifest)
        declared = Signature.from_json(self.manifest)
        problem = host_problem(declared.target)
        if problem:
            raise ArtifactError(f"{self.folder}: {problem}")
        import tvm

        lib_path = self.folder / self.manifest["library"]
        try:
            lib = tvm.runtime.load_module(str(lib_path))
        except Exception as e:  # noqa: BLE001
            raise ArtifactError(f"{lib_path}: cannot load the compiled library ({str(e).strip().splitlines()[-1]})") from None
        vm = open_vm(lib, declared.target, lib_path)
        embedded = read_signature(vm, lib_path)
        if embedded.to_json() != declared.to_json():
            diff = [k for k, v in embedded.to_json().items() if declared.to_json().get(k) != v]
            raise ArtifactError(f"{self.folder}: the manifest's {', '.join(diff)} do not match the compiled library "
                                "(edited?): recompile it")
        self.model = CompiledModel(lib, embedded, vm)

        self.signature = embedded
        self.inputs, self.outputs = self.model.inputs, self.model.outputs

    def input_names(self) -> list[str]:
        return self.model.input_names()

    def output_names(self) -> list[str]:
        return self.model.output_names()

    def check(self, inputs) -> dict[str, int]:
        """Validate ``inputs``; returns the symbolic dim bindings."""
        return self.model.check(inputs)

    def run(self, inputs):
        return self.model.run(inputs)

    __call__ = run

    @property
    def has_tokenizer(self) -> bool:
        return bool(self.manifest.get("tokenizer"))

    def generate(self, prompt, max_new_tokens: int = 32, *, temperature: float = 0.0, top_k: int = 0,
                 top_p: float = 1.0, repetition_penalty: float = 1.0, seed: int | None = None,
                 tokenizer: str | os.PathLike | None = None, chat: bool = False, on_text=None):
        """Generate text with a decoder artifact: ``prompt`` is text (tokenized with the
        artifact's tokenizer, or ``tokenizer``) or a list of token ids. Greedy by default;
        ``temperature`` > 0 samples (``top_k``, ``top_p``, ``seed``); ``repetition_penalty`` (as
        Hugging Face's) applies either way (``codegen.generate.Sampling``). Stops at the tokenizer's
        end-of-text token. ``chat``: the text is a user's message, put in the tokenizer's chat
        template (an instruct model's turn format) with the assistant's turn opened. ``on_text``
        receives the decoded text as it grows (streaming; ``TextStream``: only where it is
        stable, each time an extension of the last). Returns a ``codegen.generate.Generation``
        with ``.text`` set when a tokenizer was used."""
        from .generate import Generator, Sampling, TextStream

        sampling = Sampling(temperature, top_k, seed, top_p, repetition_penalty)  # bad values fail first
        gen = Generator(self.model)
        tok = self._tokenizer(tokenizer) if isinstance(prompt, str) or tokenizer is not None else None
        ids = self._prompt_ids(prompt, tok, chat, tokenizer)
        stream = TextStream(tok) if on_text is not None and tok is not None else None

        def on_token(t: int) -> None:
            if stream is not None and (text := stream.push(t)) is not None:
                on_text(text)

        result = gen.generate(ids, max_new_tokens, sampling, stop_tokens=self._stop(tok), on_token=on_token)
        if stream is not None and (text := stream.finish()) is not None:
            on_text(text)
        result.text = tok.decode(result.tokens, skip_special_tokens=True) if tok is not None else None
        return result

    def generate_batch(self, prompts, max_new_tokens: int = 32, *, temperature: float = 0.0, top_k: int = 0,
                       top_p: float = 1.0, repetition_penalty: float = 1.0, seed: int | None = None,
                       tokenizer: str | os.PathLike | None = None, chat: bool = False):
        """``generate`` for several prompts (texts, or lists of token ids) in one batch, left-padded
        (``codegen.generate.Generator.generate_batch``; a decoder compiled with an attention
        mask). Returns a ``Generation`` per prompt, in order."""
        from .generate import Generator, Sampling

        sampling = Sampling(temperature, top_k, seed, top_p, repetition_penalty)
        gen = Generator(self.model)
        prompts = list(prompts)
        texts = any(isinstance(p, str) for p in prompts)
        tok = self._tokenizer(tokenizer) if texts or tokenizer is not None else None
        ids = [self._prompt_ids(p, tok, chat, tokenizer) for p in prompts]
        pad = next((t for t in (getattr(tok, "pad_token_id", None), getattr(tok, "eos_token_id", None)) if t is not None), 0)
        results = gen.generate_batch(ids, max_new_tokens, sampling, stop_tokens=self._stop(tok), pad_token=pad)
        for r in results:
            r.text = tok.decode(r.tokens, skip_special_tokens=True) if tok is not None else None
        return results

    def _prompt_ids(self, prompt, tok, chat: bool, tokenizer) -> list[int]:
        """A prompt's token ids: text tokenized (``chat``: as a user's turn in the chat template),
        ids as they are."""
        if chat:
            if not isinstance(prompt, str):
                raise InvalidValueError("a chat prompt is text (a user's message), not token ids")
            if not getattr(tok, "chat_template", None):
                raise ArtifactError(f"{tokenizer or self.folder}: the tokenizer has no chat template (not an instruct "
                                    "model's); generate without --chat")
            prompt = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        # the template already holds the special tokens the model expects
        return tok(prompt, add_special_tokens=not chat)["input_ids"] if isinstance(prompt, str) else list(prompt)

    @staticmethod
    def _stop(tok) -> list[int]:
        return [tok.eos_token_id] if tok is not None and tok.eos_token_id is not None else []

    def _tokenizer(self, folder):
        from ..calibration import tokenizer as load_tokenizer

        if folder is None:
            if not self.has_tokenizer:
                raise ArtifactError(f"{self.folder} carries no tokenizer (compile it with --tokenizer DIR, or pass "
                                    "--tokenizer to generate)")
            folder = self.folder
        return load_tokenizer(folder)

    def __repr__(self) -> str:
        t = self.manifest.get("target") or {}
        return (f"<optc artifact {self.folder} for {t.get('name')}: {', '.join(self.input_names())} -> "
                f"{', '.join(self.output_names())}>")


def load(folder: str | os.PathLike):
    """Load a compiled artifact folder (``optc.load``), verified first: in this process when the
    machine can run its code, else — for another architecture whose artifact ships its native
    runner — through that runner (under qemu-user here), with the same ``run`` interface."""
    from ..targets.base import foreign_arch

    manifest = read_manifest(folder)
    runner = manifest.get("runner")
    target = Signature.from_json(manifest).target or {}
    if runner and foreign_arch(target):
        from .native_artifact import NativeArtifact

        return NativeArtifact(folder, manifest)
    return Artifact(folder)


