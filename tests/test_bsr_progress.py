"""What a user watches: plain progress lines when the output is not a terminal (a log file stays one
line per report, no carriage returns), and sample grids whose panels are labelled."""
import torch

from bsr.engine import Engine
from bsr.kernels import kernel_image
from bsr.validation import sample_grid

from toy_method import toy_config


def test_training_prints_plain_lines_when_not_on_a_terminal(tmp_path, capsys):
    Engine(toy_config(train={"iters": 5, "val_every": 0, "log_every": 2}), str(tmp_path)).train()
    out, err = capsys.readouterr()
    lines = [line for line in out.splitlines() if line.startswith("iteration")]
    assert [line.split()[1] for line in lines] == ["2/5", "4/5", "5/5"]
    assert all("l1 " in line and "it/s" in line for line in lines)
    assert "\r" not in out + err


def test_sample_grid_panels_carry_labels():
    torch.manual_seed(0)
    item = {"hr": torch.full((1, 3, 96, 96), 0.5), "lr": torch.full((1, 3, 24, 24), 0.5), "kernel": torch.ones(9, 9)}
    output = {"sr": torch.full((1, 3, 96, 96), 0.5), "kernel_est": torch.ones(9, 9)}
    grid = sample_grid(item, output)
    plain = [torch.full((3, 96, 96), 0.5)] * 3 + [kernel_image(torch.ones(9, 9), 96)] * 2
    assert grid.shape == (3, 96, 5 * 96)
    for index, panel in enumerate(plain):
        labelled = grid[:, :, index * 96:(index + 1) * 96]
        corner = labelled[:, :20, :40]
        assert corner.max() > 0.85 and corner.min() < 0.4  # white text on a dark outline
        assert (labelled[:, 30:] - panel[:, 30:]).abs().max() <= 0.5 / 255 + 1e-6  # the picture is untouched (8 bit)
