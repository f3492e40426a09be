"""Where a Hugging Face model comes from: a hub name or a local folder, its config, its weight
files and their hashes, the offline rule and the advice when it cannot be found.

Shared by the speech encoders of :mod:`~hcld_lib.features.ssl` (HuBERT, WavLM, wav2vec 2.0) and
the Whisper encoders of :mod:`~hcld_lib.features.whisper`.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch

from hcld_lib import runtime
from hcld_lib.features.backbone import sha256_bytes, sha256_file
from hcld_lib.io import HcldError, read_json

#: Weight files of a Hugging Face checkpoint, in the order ``from_pretrained`` prefers them.
HF_WEIGHT_FILES: tuple[str, ...] = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


class HFSource:
    """A Hugging Face model by hub name or local folder, resolved without loading its weights.

    ``local_only`` holds for folders and whenever :func:`hcld_lib.runtime.offline` is true, so
    nothing is fetched silently; online, a hub name downloads into the Hugging Face cache
    (``$HF_HUB_CACHE``) on first use.

    Attributes:
        name: as given. source: the resolved folder, or the hub name. config: its
            ``AutoConfig``.
    """

    def __init__(self, name: str, offline: bool | None = None, example: str = "") -> None:
        from transformers import AutoConfig

        if not name:
            raise HcldError(f"backbone 'hf:' needs a model name or folder, e.g. 'hf:{example}'")
        local = Path(name).expanduser()
        looks_local = name.startswith(("/", ".", "~")) or name.count("/") > 1
        if local.is_dir():
            self.source = str(local.resolve())
            self.local_only = True
        elif looks_local:
            raise HcldError(
                f"Hugging Face model folder {local} does not exist: check the backbone path."
            )
        else:
            self.source = name
            self.local_only = runtime.offline(offline)
        self.name = name
        self.is_folder = local.is_dir()
        try:
            self.config = AutoConfig.from_pretrained(self.source, local_files_only=self.local_only)
        except (OSError, ValueError, KeyError) as err:
            raise self.load_error(err) from err
        self._weights_sha256: str | None = None

    def load_error(self, err: BaseException) -> HcldError:
        """The error for a model that cannot be loaded: the reason and where to put the files."""
        from huggingface_hub import constants

        mode = (
            " (local files only: HF_HUB_OFFLINE is set or a folder was given)"
            if self.local_only
            else ""
        )
        reason = " ".join(str(err).split())[:400].rstrip(".")
        return HcldError(
            f"cannot load Hugging Face model '{self.name}'{mode}: {reason}. Either give a "
            "local folder holding config.json and the weights (backbone='hf:/path/to/folder', e.g. "
            "written by `model.save_pretrained(folder)`), or, on a machine with internet, run "
            f"`hf download {self.name}` (or `AutoModel.from_pretrained('{self.name}')`) and copy "
            f"the cache folder to {constants.HF_HUB_CACHE} here."
        )

    def cached(self, filename: str) -> str | None:
        """The local path of one file of the model (downloaded first when online), or None."""
        from transformers.utils import cached_file

        try:
            return cached_file(
                self.source, filename, local_files_only=self.local_only,
                _raise_exceptions_for_missing_entries=False,
                _raise_exceptions_for_connection_errors=False,
            )
        except (OSError, ValueError) as err:
            raise self.load_error(err) from err

    def preprocessor(self) -> dict[str, Any]:
        """The model's ``preprocessor_config.json`` ({} when it has none)."""
        try:
            path = self.cached("preprocessor_config.json")
        except HcldError:
            path = None
        if not path:
            return {}
        pre = read_json(path, what="a Hugging Face preprocessor config",
                        remedy=f"delete it (or the model's folder) and fetch {self.name} again")
        return pre if isinstance(pre, dict) else {}

    def weight_files(self) -> list[Path]:
        """The checkpoint's weight files (one file, or an index and its shards)."""
        for name in HF_WEIGHT_FILES:
            path = self.cached(name)
            if not path:
                continue
            files = [Path(path)]
            if name.endswith(".index.json"):
                index = read_json(path, what="a Hugging Face weight index", keys=("weight_map",),
                                  remedy=f"delete it and fetch {self.name} again")
                shards = sorted(set(index["weight_map"].values()))
                for shard in shards:
                    found = self.cached(shard)
                    if not found:
                        raise self.load_error(FileNotFoundError(f"shard {shard} is missing"))
                    files.append(Path(found))
            return files
        raise self.load_error(FileNotFoundError(f"none of {', '.join(HF_WEIGHT_FILES)} is there"))

    def identity(self) -> dict[str, Any]:
        """``config_sha256`` and ``weights_sha256``: what decides the numbers, read without
        loading the model (file hashes are remembered across processes, see ``sha256_file``)."""
        if self._weights_sha256 is None:
            lines = [f"{p.name}:{sha256_file(p)}" for p in self.weight_files()]
            self._weights_sha256 = sha256_bytes("\n".join(lines).encode())
        cfg = {
            k: v
            for k, v in self.config.to_dict().items()
            if not k.startswith("_") and k not in {"transformers_version", "dtype", "torch_dtype"}
        }
        return {
            "config_sha256": sha256_bytes(json.dumps(cfg, sort_keys=True, default=str).encode()),
            "weights_sha256": self._weights_sha256,
        }

    def from_pretrained(self, model_class: Any, ignore: tuple[str, ...] = ()) -> torch.nn.Module:
        """``model_class.from_pretrained`` in float32, eval mode; weights missing from the
        checkpoint (other than names containing one of ``ignore``) are warned about."""
        try:
            model, info = model_class.from_pretrained(
                self.source, local_files_only=self.local_only, dtype=torch.float32,
                output_loading_info=True,
            )
        except (OSError, ValueError, KeyError) as err:
            raise self.load_error(err) from err
        missing = sorted(
            k for k in info.get("missing_keys", ()) if not any(s in k for s in ignore)
        )
        if missing:
            warnings.warn(
                f"{self.name}: {len(missing)} weights were not in the checkpoint and are random "
                f"(e.g. {missing[:3]}); the features will not be those of a trained model.",
                stacklevel=4,
            )
        return model.eval()
