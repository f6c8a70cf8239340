"""``pfode edit`` on the shipped digits model, in process, at tiny sizes."""

import numpy as np
import pytest

from pfode.cli import main


@pytest.fixture(scope="module")
def images():
    """Two 8x8 "digits": a bright ring and a bar on a dark background, in the model's range [-1, 1]."""
    yy, xx = np.mgrid[0:8, 0:8]
    ring = np.where(np.abs(np.hypot(yy - 3.5, xx - 3.5) - 2.5) < 0.8, 1.0, -1.0)
    bar = np.where(np.abs(xx - 3.5) < 1.0, 1.0, -1.0)
    return np.stack([ring, bar])[:, None].astype(np.float32)


def test_edit_inpaints_nan_pixels_and_writes_the_figure(tmp_path, images, capsys):
    holes = images.copy()
    holes[:, :, 2:5, 2:6] = np.nan
    np.save(tmp_path / "holes.npy", holes)
    out = tmp_path / "out"
    rc = main(["edit", "--task", "inpaint", "--input", str(tmp_path / "holes.npy"), "--nfe", "3", "--out", str(out)])
    assert rc == 0
    restored = np.load(out / "restored.npy")
    assert restored.shape == (2, 1, 8, 8) and np.isfinite(restored).all()
    observed = ~np.isnan(holes)
    rms = float(np.sqrt(((restored - images)[observed] ** 2).mean()))
    assert rms < 0.6, rms  # steered towards the observed pixels (the images' own rms is about 1)
    assert (out / "before_after.png").stat().st_size > 0 and (out / "restored.png").exists()
    text = capsys.readouterr().out
    assert "inpaint of 2 image(s)" in text and "3 NFE" in text
    # the outputs exist now: a second run needs --force
    assert main(["edit", "--task", "inpaint", "--input", str(tmp_path / "holes.npy"), "--out", str(out)]) == 1
    assert "--force" in capsys.readouterr().err


def test_edit_superres_from_a_png_with_simulate_reports_psnr(tmp_path, images, capsys):
    import matplotlib.image as mpimg

    mpimg.imsave(tmp_path / "digit.png", (images[0, 0] + 1) / 2, cmap="gray", vmin=0, vmax=1)
    rc = main(
        [
            "edit",
            "--task",
            "superres",
            "--input",
            str(tmp_path / "digit.png"),
            "--simulate",
            "--factor",
            "2",
            "--nfe",
            "2",
            "--out",
            str(tmp_path / "sr"),
        ]
    )
    assert rc == 0 and "PSNR to the clean input" in capsys.readouterr().out


def test_edit_bad_inputs_give_one_error_line(tmp_path, images, capsys):
    np.save(tmp_path / "clean.npy", images)
    np.save(tmp_path / "wrong.npy", np.zeros((2, 1, 5, 5), dtype=np.float32))
    cases = [
        (["--task", "inpaint", "--input", str(tmp_path / "missing.npy")], 1, "no such file"),
        (["--task", "inpaint", "--input", str(tmp_path / "clean.npy")], 1, "NaN"),
        (["--task", "denoise", "--input", str(tmp_path / "wrong.npy")], 1, "shape"),
        (["--task", "denoise", "--input", str(tmp_path / "clean.npy"), "--method", "nope"], 2, "unknown --method"),
        (["--task", "inpaint", "--input", str(tmp_path / "clean.npy"), "--method", "sdedit"], 2, "--task denoise"),
    ]
    for args, code, words in cases:
        assert main(["edit", *args, "--out", str(tmp_path / "o")]) == code, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("pfode: error:") and words in err[0], err
    assert not (tmp_path / "o").exists()
