"""Names and constants shared by every stage, so the generator, importers, prepare, taggers and server agree.

The canonical in-memory jet collection is an awkward Array of records whose field names are exactly the
branch names of the on-disk ROOT TTree ``jets`` (the tutorial's c2numpy ntuple style).
"""
from __future__ import annotations

TREE_NAME = "jets"
# Batch scoring's output tree, aligned entry by entry with the input's jets (usable as a friend of ``jets``).
SCORES_TREE = "scores"
SCORES_ID_BRANCHES = ("run", "lumi", "event", "ijet")
SCORES_JET_BRANCHES = ("jet_pt_ak7", "jet_eta_ak7", "jet_msd_ak7")

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

# Simulated processes: W-jet signal (ttbar or W+jets, W -> qq) and the QCD multijet background.
SIGNAL_PROCESSES = ("ttbar", "wjets")
BACKGROUND_PROCESS = "qcd"
PROCESSES = (*SIGNAL_PROCESSES, BACKGROUND_PROCESS)

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
    "log_pt",  # log(pt / GeV)
    "log_e",  # log(E / GeV), E = pt cosh(eta) (massless constituents)
    "in_softdrop",  # 1 if the particle survives the soft drop of jet_msd_ak7 (beta 0, z_cut 0.1), else 0
    "prong",  # +1 in the groomed jet's harder prong, -1 in the softer, 0 groomed away
    "dr_prong1",  # dR(eta, phi) to the harder prong's axis
    "dr_prong2",  # dR to the softer prong's axis (the harder one's when grooming keeps one particle)
    "log_n",  # log of the jet's number of constituents (all of them, not only the first MAX_PARTICLES)
    "jet_eta",  # the jet's eta, as the hl taggers see it
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
    BYTES_PER_JET = "wtag.bytes_per_jet"  # memory one jet costs a run (activations); the server caps runs by it


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
    ONNX_SHA256 = "wtag.onnx_sha256"
    HOST = "wtag.host"  # where the process that owns a run lives, with its pid and start time: a run left
    PID = "wtag.pid"  # RUNNING by a process that is gone is marked FAILED by the next step (wtag.tracking)
    PID_START = "wtag.pid_start"
    # Mass decorrelation: the training setting of a tagger run (``none`` or ``disco<lambda>``), and on the
    # ``evaluate`` run the best candidate whose test_mass_sculpting is at most ``max_sculpting``.
    DECORRELATION = "wtag.decorrelation"
    DECORRELATED_RUN_ID = "wtag.decorrelated_run_id"
    DECORRELATED_CANDIDATE = "wtag.decorrelated_candidate"
    # On the ``evaluate`` run: the champion's margin over the runner-up in standard deviations (paired bootstrap)
    CHAMPION_MARGIN_SIGMA = "wtag.champion_margin_sigma"
    CHAMPION_SIGNIFICANT = "wtag.champion_significant"
    # On the ``train`` parent and ``main`` runs: the candidate whose test metrics they show
    BEST_RUN_ID = "wtag.best_run_id"
    BEST_CANDIDATE = "wtag.best_candidate"
    # Tuning: on ``tune`` and ``tune_trial`` runs the Optuna study; on a trial run its number and final state
    # (TRIAL_STATES); on ``train`` and tagger runs trained with tuned parameters, the ``tune`` run they came from.
    STUDY = "wtag.study"
    TRIAL_NUMBER = "wtag.trial_number"
    TRIAL_STATE = "wtag.trial_state"
    PARAMS_FROM = "wtag.params_from"

    @staticmethod
    def alias(alias: str, event: str) -> str:
        """On a model version: when it got or lost ``alias`` (``since``/``until``), and its successor."""
        return f"wtag.alias.{alias}.{event}"

    @staticmethod
    def alias_history(alias: str) -> str:
        """On the registered model: the JSON history of ``alias``."""
        return f"wtag.alias_history.{alias}"


class EntryPoint:
    """Values of ``Tag.ENTRY_POINT``: one per MLproject step, plus the per-tagger child run of ``train``."""

    PREPARE = "prepare"
    TRAIN = "train"
    TRAIN_TAGGER = "train_tagger"
    EVALUATE = "evaluate"
    EXPORT = "export"
    MAIN = "main"
    SCORE = "score"
    TUNE = "tune"
    TUNE_TRIAL = "tune_trial"  # one Optuna trial, a child run of ``tune``


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
    SCORE_INPUTS = "inputs.json"  # score run: each input with its size and sha256
    SCORE_PLOT = "score_distribution.png"
    COMPARISON_TABLE = "comparison_table.json"  # mlflow.log_table: the comparison in the UI's artifact view
    FRONT_PNG = "decorrelation_front.png"  # r50 vs 1/JSD with the Pareto front
    FRONT_MASS_PNG = "decorrelation_front_mass.png"  # QCD msd before / after the cut, front members
    FRONT_CSV = "decorrelation_front.csv"
    BEST_PARAMS = "best_params.json"  # tune run: the tagger, the best trial's parameters, its objective
    TRIALS_TABLE = "trials.json"  # tune run (mlflow.log_table): every trial, its state, objective, parameters


REGISTERED_MODEL = "wtag"
CHAMPION_ALIAS = "champion"
DECORRELATED_ALIAS = "decorrelated"  # the best candidate with test_mass_sculpting <= max_sculpting
DECORRELATION_NONE = "none"  # Tag.DECORRELATION of a run trained without a decorrelation penalty
TRIAL_STATES = ("complete", "pruned", "failed")  # Tag.TRIAL_STATE values
