//! The kinds a run is made of — optimizer, rotation, precision, device, blocks — as types, parsed once at
//! the edge (the command line, a config file) and matched as enums everywhere below it.
//!
//! Every kind is a [`Choice`]: a fixed table of (value, name, one-line description). The name is what the
//! command line accepts and what `config.json`, `metrics.jsonl` and `state.json` store; the description is
//! what `--help` shows. One table per kind means the parser, the serialised form and the help cannot drift
//! apart.

use crate::error::{Error, Result};

/// A setting with a fixed set of named values.
pub trait Choice: Copy + PartialEq + Sized + 'static {
    /// What the values choose, as error messages name it (e.g. `rotation`).
    const WHAT: &'static str;
    /// Every value with its name and a one-line description, in the order `--help` lists them.
    const VALUES: &'static [(Self, &'static str, &'static str)];

    /// The name of this value (what the command line accepts and files store).
    fn name(self) -> &'static str {
        Self::VALUES
            .iter()
            .find(|(v, _, _)| *v == self)
            .map(|(_, n, _)| *n)
            .expect("every value of a Choice is in its table")
    }

    /// Every name, in table order.
    fn names() -> Vec<&'static str> {
        Self::VALUES.iter().map(|(_, n, _)| *n).collect()
    }

    /// The value named `s`; an error naming the setting and listing the accepted names otherwise.
    fn parse(s: &str) -> Result<Self> {
        Self::VALUES
            .iter()
            .find(|(_, n, _)| *n == s)
            .map(|(v, _, _)| *v)
            .ok_or_else(|| {
                Error::config(
                    Self::WHAT,
                    format!(
                        "unknown {} '{s}'; expected one of {}",
                        Self::WHAT,
                        Self::names().join(", ")
                    ),
                )
            })
    }
}

/// `name()`, `Display`, `FromStr` and serde (as the name) for a [`Choice`].
macro_rules! choice_impls {
    ($($t:ty),*) => {$(
        impl $t {
            /// The name of this value (what the command line accepts and files store).
            pub fn name(self) -> &'static str {
                <Self as $crate::config::Choice>::name(self)
            }
        }
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }
        impl std::str::FromStr for $t {
            type Err = $crate::error::Error;
            fn from_str(s: &str) -> $crate::error::Result<Self> {
                <$t as $crate::config::Choice>::parse(s)
            }
        }
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let s = <String as serde::Deserialize>::deserialize(d)?;
                <$t as $crate::config::Choice>::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    )*};
}

/// The optimizer of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OptimizerKind {
    Adamw,
    Sgd,
    Adasgd,
    BlockwiseAdam,
    Muon,
}

impl Choice for OptimizerKind {
    const WHAT: &'static str = "optimizer";
    const VALUES: &'static [(Self, &'static str, &'static str)] = &[
        (
            OptimizerKind::Adamw,
            "adamw",
            "AdamW (Maes et al. Alg. 1), decoupled weight decay",
        ),
        (
            OptimizerKind::Sgd,
            "sgd",
            "SGD with momentum (torch semantics)",
        ),
        (
            OptimizerKind::Adasgd,
            "adasgd",
            "momentum with one scalar second moment, the mean of g² over all coordinates (Xie et al.)",
        ),
        (
            OptimizerKind::BlockwiseAdam,
            "blockwise-adam",
            "one second moment per block (Xie et al. Alg. 3); blocks from --blocks",
        ),
        (
            OptimizerKind::Muon,
            "muon",
            "Muon (Jordan et al. 2024) on the 2-D hidden weights: momentum orthogonalized by Newton–Schulz; AdamW on embeddings and 1-D tensors",
        ),
    ];
}

/// The blocks of blockwise Adam.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum BlockPartition {
    #[default]
    Tensor,
    Neuron,
    Coordinate,
}

impl Choice for BlockPartition {
    const WHAT: &'static str = "blocks";
    const VALUES: &'static [(Self, &'static str, &'static str)] = &[
        (
            BlockPartition::Tensor,
            "tensor",
            "one block per tensor (ParamTable entry)",
        ),
        (
            BlockPartition::Neuron,
            "neuron",
            "one block per output neuron: the groups of --rotation output (a row of an (out,in) weight; embeddings and 1-D tensors as --embedding-rotation and --vector-rotation say)",
        ),
        (
            BlockPartition::Coordinate,
            "coordinate",
            "one block per coordinate: blockwise Adam is then Adam (a check, not an experiment)",
        ),
    ];
}

/// What the neuron scopes (`output`, `input`) and blockwise Adam's neuron blocks do with a 1-D tensor (a
/// LayerNorm gain or bias, a linear bias), which has no (out, in) structure.
///
/// A LayerNorm gain γⱼ scales neuron j alone, so under the neuron-wise definition of Maes et al. (§2.3,
/// Fig. 6; App. D.1: "the weights that lead to the same output neuron") γⱼ is a group by itself: the
/// paper implies `neuron` (it says nothing of 1-D tensors, and its GPT-2 has no biases, App. D.2).
/// `mixed` is what this project did before the setting existed; a `config.json` without the field
/// reads as `mixed` (`RotationConfig`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum VectorRotation {
    /// One group per tensor: the gains of one LayerNorm are mixed with each other.
    Mixed,
    /// One group per coordinate: γⱼ (and a bias bⱼ) stays alone, up to the sign of a 1×1 Haar block.
    #[default]
    Neuron,
}

impl Choice for VectorRotation {
    const WHAT: &'static str = "vector-rotation";
    const VALUES: &'static [(Self, &'static str, &'static str)] = &[
        (
            VectorRotation::Mixed,
            "mixed",
            "each 1-D tensor is one group: a LayerNorm's gains are mixed with each other",
        ),
        (
            VectorRotation::Neuron,
            "neuron",
            "each coordinate of a 1-D tensor is its own group: the gain of neuron j stays with neuron j (Maes et al. §2.3, App. D.1)",
        ),
    ];
}

/// How the neuron scopes (`output`, `input`) and blockwise Adam's neuron blocks split the embeddings
/// wte (V, C) and wpe (T, C), stored (in, out) as lookup tables; `None` also keeps them out of `layer` and
/// `global`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum EmbeddingRotation {
    /// Transposed, as the paper does (Maes et al. App. D.1): under `output` a group is a column (the V
    /// resp. T weights feeding channel j), under `input` a row.
    #[default]
    Paper,
    /// wte as the tied LM head sees it, an (out, in) = (V, C) weight whose output neurons are the tokens:
    /// under `output` a row (token i's C weights), under `input` a column; wpe as `paper`.
    Head,
    /// wte and wpe left unrotated (the rotation is the identity on them), under every scope.
    None,
}

impl Choice for EmbeddingRotation {
    const WHAT: &'static str = "embedding-rotation";
    const VALUES: &'static [(Self, &'static str, &'static str)] = &[
        (
            EmbeddingRotation::Paper,
            "paper",
            "transposed as in the paper (App. D.1): under output a column of wte/wpe (all tokens feeding one channel), under input a row",
        ),
        (
            EmbeddingRotation::Head,
            "head",
            "wte by rows as the tied LM head sees it (an output neuron is a token; under input, columns); wpe as paper",
        ),
        (
            EmbeddingRotation::None,
            "none",
            "wte and wpe unrotated, under every scope (layer and global included; there paper and head are the same)",
        ),
    ];
}

/// Where `--rotation soap` keeps Adam's first moment (Vyas et al. 2024, "SOAP", Alg. 3 and their released
/// code). `original` and `eigenbasis` are equal in exact arithmetic (the first moment is linear in the
/// gradients); `positional` is the poster's `svd` rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SoapMoment {
    /// In the original space, M ← β₁M + (1−β₁)G, projected into the current eigenbasis every step (the
    /// paper's Alg. 3).
    #[default]
    Original,
    /// In the eigenbasis, carried into the new basis at each refresh (Q_newᵀ·Q_old·M̃·Q_oldᵀ·Q_new, as
    /// the released code does).
    Eigenbasis,
    /// In the eigenbasis, not carried across a refresh (the poster's `svd` rotation does this).
    Positional,
}

impl Choice for SoapMoment {
    const WHAT: &'static str = "soap-first-moment";
    const VALUES: &'static [(Self, &'static str, &'static str)] = &[
        (
            SoapMoment::Original,
            "original",
            "kept in the original space and projected every step (Vyas et al. Alg. 3)",
        ),
        (
            SoapMoment::Eigenbasis,
            "eigenbasis",
            "kept in the eigenbasis and carried into each new basis (SOAP's released code)",
        ),
        (
            SoapMoment::Positional,
            "positional",
            "kept in the eigenbasis, not carried at a refresh (the poster's svd rule)",
        ),
    ];
}

/// The bases `--rotation soap` starts from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SoapInit {
    /// Eigenvectors of the factors after the first step's gradient: the first refresh is at step 1 (as
    /// `svd`, and as SOAP's released code, which spends its first step on it).
    #[default]
    Eigh,
    /// The identity: the first refresh is at step F + 1, and until then SOAP is AdamW.
    Identity,
}

impl Choice for SoapInit {
    const WHAT: &'static str = "soap-init";
    const VALUES: &'static [(Self, &'static str, &'static str)] = &[
        (
            SoapInit::Eigh,
            "eigh",
            "the factors' eigenvectors after step 1's gradient (first refresh at step 1)",
        ),
        (
            SoapInit::Identity,
            "identity",
            "the standard basis until the first refresh at step F + 1",
        ),
    ];
}

/// The arithmetic of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Precision {
    Fp32,
    Fp64,
    Bf16,
}

impl Choice for Precision {
    const WHAT: &'static str = "precision";
    const VALUES: &'static [(Self, &'static str, &'static str)] = &[
        (Precision::Fp32, "fp32", "single precision throughout"),
        (
            Precision::Fp64,
            "fp64",
            "double precision (the CPU only): the reference",
        ),
        (
            Precision::Bf16,
            "bf16",
            "bf16 matmul inputs and activations, fp32 accumulation, fp32 master weights and optimizer state",
        ),
    ];
}

/// Where a run's ops execute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    Auto,
    Cpu,
    Cuda,
}

impl Choice for DeviceKind {
    const WHAT: &'static str = "device";
    const VALUES: &'static [(Self, &'static str, &'static str)] = &[
        (
            DeviceKind::Auto,
            "auto",
            "CUDA when a device is present and passes a self-check against the CPU, the CPU otherwise",
        ),
        (DeviceKind::Cpu, "cpu", "the CPU backend"),
        (
            DeviceKind::Cuda,
            "cuda",
            "CUDA, required: an error when no device is usable",
        ),
    ];
}

/// Which coordinates a block rotation may mix (`rotation::scope` builds the groups of each).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The identity: Adam in the standard basis.
    #[default]
    None,
    /// All parameters as one vector.
    Global,
    /// Within each tensor (q, k and v separately; each LayerNorm gain/bias on its own).
    Layer,
    /// Within the weights leading to one output neuron (a row; a column of an embedding).
    Output,
    /// Within the weights leaving one input neuron (a column; a row of an embedding).
    Input,
}

/// The scopes' rows, the one place their names and descriptions are written: `Scope`'s table, and the
/// first rows of [`RotationKind`]'s.
const SCOPES: [(Scope, &str, &str); 5] = [
    (
        Scope::None,
        "none",
        "the identity: Adam in the standard basis",
    ),
    (
        Scope::Global,
        "global",
        "all parameters as one vector, permuted and rotated in Haar blocks of n",
    ),
    (
        Scope::Layer,
        "layer",
        "within each tensor (q, k and v separately)",
    ),
    (
        Scope::Output,
        "output",
        "within the weights leading to one output neuron",
    ),
    (
        Scope::Input,
        "input",
        "within the weights leaving one input neuron",
    ),
];

impl Choice for Scope {
    const WHAT: &'static str = "rotation";
    const VALUES: &'static [(Self, &'static str, &'static str)] = &SCOPES;
}

/// The rotation of the optimizer's basis (`--rotation`): a block rotation of some scope (Maes et al. §2.3,
/// App. C), the poster's rotation by each weight's gradient singular vectors, or Xie et al.'s chained
/// Kronecker rotation (App. D.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RotationKind {
    Scope(Scope),
    Svd,
    Soap,
    Kron,
}

impl Default for RotationKind {
    fn default() -> Self {
        RotationKind::Scope(Scope::None)
    }
}

impl RotationKind {
    /// True for `none`, the standard basis.
    pub fn is_none(self) -> bool {
        self == RotationKind::Scope(Scope::None)
    }
}

/// [`SCOPES`] as rotations, then the rotations that are not block rotations.
const ROTATIONS: [(RotationKind, &str, &str); SCOPES.len() + 3] = {
    let mut rows = [(RotationKind::Svd, "", ""); SCOPES.len() + 3];
    let mut i = 0;
    while i < SCOPES.len() {
        let (scope, name, help) = SCOPES[i];
        rows[i] = (RotationKind::Scope(scope), name, help);
        i += 1;
    }
    rows[i] = (
        RotationKind::Svd,
        "svd",
        "each 2-D weight by its gradient's singular vectors, refreshed every --svd-every steps (poster)",
    );
    rows[i + 1] = (
        RotationKind::Soap,
        "soap",
        "each 2-D weight by the eigenvectors of EMAs of G·Gᵀ and Gᵀ·G, refreshed every --soap-every steps (SOAP, Vyas et al. 2024)",
    );
    rows[i + 2] = (
        RotationKind::Kron,
        "kron",
        "chained permutations and three-factor Kronecker rotations of all parameters (Xie et al. App. D.1)",
    );
    rows
};

impl Choice for RotationKind {
    const WHAT: &'static str = "rotation";
    const VALUES: &'static [(Self, &'static str, &'static str)] = &ROTATIONS;
}

pub(crate) use choice_impls;

choice_impls!(
    OptimizerKind,
    BlockPartition,
    VectorRotation,
    EmbeddingRotation,
    Precision,
    DeviceKind,
    Scope,
    RotationKind,
    SoapMoment,
    SoapInit
);
