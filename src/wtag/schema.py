"""Names and constants shared by every stage, so the generator, importers, prepare, taggers and server agree.

The canonical in-memory jet collection is an awkward Array of records whose field names are exactly the
branch names of the on-disk ROOT TTree ``jets`` (the tutorial's c2numpy ntuple style).
"""
from __future__ import annotations

TREE_NAME = "jets"

# Anti-kT jet radius and the tutorial's selection.
JET_R = 0.7
JET_ETA_MAX = 2.0
JET_PT_MIN = 200.0
JET_PT_MAX = 500.0

# Per-jet scalar branches (float64 unless listed in INT_BRANCHES).
JET_BRANCHES = (
    "jet_pt_ak7",
    "jet_eta_ak7",
    "jet_phi_ak7",
    "jet_E_ak7",
    "jet_mass_ak7",
    "jet_msd_ak7",
    "jet_tau1_ak7",
    "jet_tau2_ak7",
    "jet_tau3_ak7",
    "jet_tau21_ak7",
    "jet_tau32_ak7",
    "jet_ncand_ak7",
    "jet_isW_ak7",
    "weight",
)
# Event bookkeeping branches. ``sample_id`` says which generated sample or pT-hat slice the jet came from
# (see wtag.sources.pythia.SAMPLES); ``ijet`` is the jet's index in its event.
EVENT_BRANCHES = ("run", "lumi", "event", "ijet", "sample_id")
INT_BRANCHES = frozenset({"jet_ncand_ak7", "jet_isW_ak7", "run", "lumi", "event", "ijet", "sample_id"})

# Jagged per-constituent branches (pt/eta/phi float64, id/charge int32). ``id`` is a PDG-style code as in the
# CMS ntuples: +-211 charged hadron, 130 neutral hadron, 22 photon, +-11 electron, +-13 muon.
CAND_BRANCHES = ("ak7pfcand_pt", "ak7pfcand_eta", "ak7pfcand_phi", "ak7pfcand_id", "ak7pfcand_charge")
INT_CAND_BRANCHES = frozenset({"ak7pfcand_id", "ak7pfcand_charge"})

# isW: 1 merged W jet, 0 QCD jet, -1 unknown (collision data).
LABEL_UNKNOWN = -1

# High-level feature table: column order is part of the model interface (ONNX input "hl").
HL_FEATURES = (
    "jet_msd_ak7",
    "jet_mass_ak7",
    "jet_tau1_ak7",
    "jet_tau2_ak7",
    "jet_tau3_ak7",
    "jet_tau21_ak7",
    "jet_tau32_ak7",
    "jet_ncand_ak7",
    "jet_pt_ak7",
    "jet_eta_ak7",
)

# Jet images (the tutorial's convention): 30 x 30 pixels over deta, dphi in [-1.4, 1.4], pixel = summed pT.
IMAGE_PIXELS = 30
IMAGE_HALF_WIDTH = 1.4

# Per-particle features of the padded constituent list (ONNX input "particles"), pT-ordered, zero-padded.
# Raw values: real particles always have pt > 0, so ``pt > 0`` is the mask.
PARTICLE_FEATURES = (
    "pt",  # GeV
    "deta",  # eta - jet eta
    "dphi",  # phi - jet phi, wrapped to (-pi, pi]
    "log_pt_rel",  # log(pt / pT of the constituents' vector sum), the same for real and simulated jets
    "dr",  # sqrt(deta^2 + dphi^2)
    "charge",
    "is_charged_hadron",
    "is_neutral_hadron",
    "is_photon",
    "is_electron",
    "is_muon",
)
MAX_PARTICLES = 64

# Model input names (ONNX graph inputs and prepared-array keys) and the single ONNX output.
INPUT_HL = "hl"
INPUT_IMAGES = "images"
INPUT_PARTICLES = "particles"
OUTPUT_SCORE = "score"

# The per-jet shape of each model input (the ONNX graph input is [N, *shape], float32, N dynamic).
INPUT_SHAPES: dict[str, tuple[int, ...]] = {
    INPUT_HL: (len(HL_FEATURES),),
    INPUT_IMAGES: (IMAGE_PIXELS, IMAGE_PIXELS, 1),
    INPUT_PARTICLES: (MAX_PARTICLES, len(PARTICLE_FEATURES)),
}
# Column of the particle pT in the ``particles`` input: ``pt > 0`` marks real (unpadded) particles.
PARTICLE_PT = PARTICLE_FEATURES.index("pt")


def expected_shape(input_name: str) -> tuple[int, ...]:
    """Per-jet shape of a model input; WtagError naming the known inputs for anything else."""
    from wtag.errors import WtagError

    if input_name not in INPUT_SHAPES:
        raise WtagError(f"unknown model input '{input_name}' (known: {', '.join(INPUT_SHAPES)})")
    return INPUT_SHAPES[input_name]


class Meta:
    """Keys of the ``metadata_props`` every exported ONNX graph carries (docs/contracts.md)."""

    TAGGER = "wtag.tagger"
    FAMILY = "wtag.family"
    INPUTS = "wtag.inputs"  # JSON list of input names
    HL_FEATURES = "wtag.hl_features"  # JSON list, the column order of ``hl``
    PARTICLE_FEATURES = "wtag.particle_features"  # JSON list, the column order of ``particles``
    MAX_PARTICLES = "wtag.max_particles"
    PREPROCESSING = "wtag.preprocessing"  # "baked": the graph standardizes raw inputs itself
    DATASET_DIGEST = "wtag.dataset_digest"
    RUN_ID = "wtag.run_id"


class Tag:
    """MLflow tag keys on runs and model versions: what the steps write and search for."""

    ENTRY_POINT = "wtag.entry_point"
    TAGGER = "wtag.tagger"
    FAMILY = "wtag.family"
    SOURCE = "wtag.source"
    DATASET_DIGEST = "wtag.dataset_digest"
    PREPARE_RUN_ID = "wtag.prepare_run_id"
    GIT_COMMIT = "wtag.git_commit"
    PYTHON = "wtag.python"
    PLATFORM = "wtag.platform"
    VERSION_PREFIX = "wtag.version."  # + package name
    CHAMPION_RUN_ID = "wtag.champion_run_id"
    CHAMPION_TAGGER = "wtag.champion_tagger"
    CHAMPION_METRIC = "wtag.champion_metric"
    CHAMPION_VALUE = "wtag.champion_value"
    SOURCE_RUN_ID = "wtag.source_run_id"
    EXPORT_RUN_ID = "wtag.export_run_id"
    MODEL_URI = "wtag.model_uri"
    REGISTERED_VERSION = "wtag.registered_version"
    REUSED_RUN = "wtag.reused_run"
    ONNX_MAX_ABS_DIFF = "wtag.onnx_max_abs_diff"
    ONNX_FRAC_DIFF = "wtag.onnx_frac_diff"
    INIT_FROM = "wtag.init_from"  # on a tagger run fine-tuned from another: the parent tagger run id
    STEP_PREFIX = "wtag.step."  # + step name, on the ``main`` run

    @staticmethod
    def alias_since(alias: str) -> str:
        return f"wtag.alias.{alias}.since"

    @staticmethod
    def alias_until(alias: str) -> str:
        return f"wtag.alias.{alias}.until"

    @staticmethod
    def alias_replaced_by(alias: str) -> str:
        return f"wtag.alias.{alias}.replaced_by"

    @staticmethod
    def alias_history(alias: str) -> str:
        return f"wtag.alias_history.{alias}"


class EntryPoint:
    """Values of ``Tag.ENTRY_POINT``: one per MLproject step, plus the per-tagger child run of ``train``."""

    PREPARE = "prepare"
    TRAIN = "train"
    TRAIN_TAGGER = "train_tagger"
    EVALUATE = "evaluate"
    EXPORT = "export"
    MAIN = "main"


class Artifact:
    """Artifact names inside runs and logged models."""

    MODEL = "model"  # the logged model of a tagger run (native flavor) and of an export run (ONNX)
    TEST_SCORES = "test_scores.npz"  # arrays score, label, msd over the held-out test split
    PREPROCESS = "preprocess.json"  # beside model.onnx: the baked standardization, for humans
    MANIFEST = "manifest.json"
    STANDARDIZATION = "standardization.json"
    COMPARISON_CSV = "comparison.csv"
    COMPARISON_MD = "comparison.md"
    CHAMPION_TXT = "champion.txt"


REGISTERED_MODEL = "wtag"
CHAMPION_ALIAS = "champion"
