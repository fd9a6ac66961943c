"""Where the real images for demos and the zoo come from.

``../shared/data`` (ORL faces with identities, a CIFAR-10 subset) when present; otherwise
images that ship inside installed packages (scikit-image's samples, scikit-learn's digits),
so a demo still runs on a machine without the shared folder.
"""

from __future__ import annotations

import io
from pathlib import Path

from audit_lib.config import get_settings


def faces_dir() -> Path | None:
    """The ORL faces folder (``orl/sK/N.pgm``), or None when it is not on this machine."""
    path = get_settings().shared_data_dir / "faces" / "orl"
    return path if path.is_dir() else None


def cifar10_path() -> Path | None:
    path = get_settings().shared_data_dir / "cifar10" / "cifar10-subset.npz"
    return path if path.is_file() else None


def sample_person_photos(out: Path, person: int = 1, count: int = 4) -> list[Path]:
    """Write ``count`` real photos of one person into ``out`` and return their paths.

    ORL person ``person`` when the shared data is here, else crops of scikit-image's
    astronaut photograph (one real person) as the fallback.
    """
    out.mkdir(parents=True, exist_ok=True)
    written = []
    faces = faces_dir()
    if faces is not None:
        for i in range(1, count + 1):
            dst = out / f"{i}.pgm"
            dst.write_bytes((faces / f"s{person}" / f"{i}.pgm").read_bytes())
            written.append(dst)
        return written
    from PIL import Image
    from skimage import data

    astronaut = Image.fromarray(data.astronaut())
    for i in range(count):
        box = (140 + 6 * i, 20 + 4 * i, 300 + 6 * i, 200 + 4 * i)
        dst = out / f"{i + 1}.png"
        buf = io.BytesIO()
        astronaut.crop(box).save(buf, "PNG")
        dst.write_bytes(buf.getvalue())
        written.append(dst)
    return written
