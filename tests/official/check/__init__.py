"""How the generators were checked against the official code (run by hand, not by pytest).

Clone the official repositories anywhere outside this one, then, for each, write its files with
its own code and compare them with the generator's (``compare.py``: keys in order, shapes,
dtypes, optimizer state and param-group keys and value types, pickle globals of ``data.pkl``)::

    python tests/official/check/vicreg_official.py /tmp/off_vicreg main /tmp/chk/vicreg_main
    python tests/official/check/vicreg_official.py /tmp/off_vicreg module /tmp/chk/vicreg_module
    python tests/official/gen_vicreg.py generate /tmp/fx/vm
    python tests/official/as_module.py main_vicreg tests/official/gen_vicreg.py generate /tmp/fx/vs
    python tests/official/check/compare.py /tmp/chk/vicreg_main/model.pth /tmp/fx/vm/model.pth
    python tests/official/check/compare.py /tmp/chk/vicreg_module/model.pth /tmp/fx/vs/model.pth
    python tests/official/check/swav_official.py /tmp/off_swav /tmp/apex_LARC.py /tmp/chk/swav
    python tests/official/check/simsiam_official.py /tmp/off_simsiam /tmp/chk/simsiam
    /tmp/venv-solo/bin/python tests/official/check/byol_official.py /tmp/off_solo /tmp/chk/byol
    python tests/official/gen_byol.py generate /tmp/fx/byol --epoch 1
    python tests/official/check/compare.py /tmp/chk/byol/trained_models/byol/0/byol-cifar10-0-ep=0.ckpt \
        /tmp/fx/byol/byol-cifar10-0-ep=0.ckpt
    python tests/official/check/mocov3_official.py /tmp/off_mocov3 /tmp/chk/mocov3
    python tests/official/gen_mocov3.py generate /tmp/fx/mocov3
    python tests/official/check/compare.py /tmp/chk/mocov3/checkpoint_0099.pth.tar /tmp/fx/mocov3/checkpoint_0099.pth.tar
    python tests/official/check/mocov3_vit_official.py /tmp/off_mocov3 /tmp/chk/mocov3_vit
    python tests/official/gen_mocov3_vit.py generate /tmp/fx/mocov3_vit
    python tests/official/check/compare.py /tmp/chk/mocov3_vit/checkpoint_0299.pth.tar /tmp/fx/mocov3_vit/checkpoint_0299.pth.tar
    PYTHONPATH=src python tests/official/check/mocov3_vit_official.py /tmp/off_mocov3 /tmp/chk/vit_s --full

(``/tmp/venv-solo``: a venv with ``--system-site-packages`` plus lightning 2.1.2, torchmetrics<0.12,
omegaconf, hydra-core, einops and setuptools<70, for solo-learn; never e2mc's environment.)
(``/tmp/apex_LARC.py``: ``git show cb65b8ed^:apex/parallel/LARC.py`` of NVIDIA/apex.) These
scripts import the official code from the given folder; none of it is copied here.
"""
