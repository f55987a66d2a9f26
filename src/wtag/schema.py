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
