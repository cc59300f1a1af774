"""fairseq's ``examples/hubert/simple_kmeans/learn_kmeans.py`` against e2mc's k-means fit
(``e2mc.methods.hubert.FAIRSEQ_KMEANS``) on the same features.

Usage: ``hubert_kmeans_official.py REPO`` (a fairseq checkout; the script needs numpy, scikit-learn
and joblib, not fairseq's package). It writes seeded random features in the layout of
``dump_hubert_feature.py`` (``train_0_1.npy`` + ``train_0_1.len``), runs the official
``learn_kmeans(...)`` with its argparse defaults (read from the file's ``add_argument`` calls, so
the values are the file's) and ``n_clusters`` 20, seed 0, and fits
``MiniBatchKMeans(n_clusters=20, random_state=0, **FAIRSEQ_KMEANS)`` on the same rows. Prints the
official settings, whether every constructor parameter other than ``verbose`` / ``random_state``
agrees, and whether the centroids are equal bit for bit (the official script seeds numpy's global
RandomState, e2mc passes the seed: the same stream).

Result (2026-12-06, fairseq 3d262bb2, scikit-learn 1.9.1): parameters equal, centroids equal.
"""

import ast
import importlib.util
import sys
import tempfile
from pathlib import Path

import joblib
import numpy as np
from sklearn.cluster import MiniBatchKMeans

from e2mc.methods.hubert import FAIRSEQ_KMEANS

path = Path(sys.argv[1]) / "examples" / "hubert" / "simple_kmeans" / "learn_kmeans.py"
defaults = {}
for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument" and node.args:
        name = node.args[0].value
        kw = {k.arg: k.value for k in node.keywords}
        if name.startswith("--") and "default" in kw:
            defaults[name[2:]] = ast.literal_eval(kw["default"])
print("official defaults:", defaults)
spec = importlib.util.spec_from_file_location("learn_kmeans", path)
official = importlib.util.module_from_spec(spec)
spec.loader.exec_module(official)

x = np.random.default_rng(1).standard_normal((3000, 16)).astype(np.float32)
with tempfile.TemporaryDirectory() as tmp:
    np.save(f"{tmp}/train_0_1.npy", x)
    Path(f"{tmp}/train_0_1.len").write_text("\n".join(["100"] * 30) + "\n")
    official.learn_kmeans(tmp, "train", 1, f"{tmp}/km.bin", n_clusters=20, **defaults)
    ref = joblib.load(f"{tmp}/km.bin")
ours = MiniBatchKMeans(n_clusters=20, random_state=defaults["seed"], **FAIRSEQ_KMEANS).fit(x)
a, b = ref.get_params(), ours.get_params()
diff = {k: (a[k], b[k]) for k in a if k not in ("verbose", "random_state") and a[k] != b[k]}
print("parameters equal:", not diff, diff or "")
print("centroids equal:", bool(np.array_equal(ref.cluster_centers_, ours.cluster_centers_)))
