//! Settings with a fixed set of values, parsed to enums when the config is loaded: the code
//! matches on a variant, never on a string. [`check`] looks at each of them before the
//! config is deserialized, so a bad value is reported by its key, as every other bad value.

use serde::{Deserialize, Serialize};

use super::validate::{invalid, ConfigError};

/// Declares a setting's enum with its words in the config (as in the file, lowercase).
macro_rules! choice {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $word:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vdoc])* #[serde(rename = $word)] $variant,)+
        }

        impl $name {
            /// The words the config accepts.
            pub const WORDS: &'static [&'static str] = &[$($word),+];
        }
    };
}

choice! {
    /// `tiered.topic_naming`: the secondary's names for mirrored topics.
    TopicNaming {
        /// The same name.
        Identity = "identity",
        /// MirrorMaker 2's `<source_alias>.<topic>`.
        Prefix = "prefix",
    }
}

choice! {
    /// `tiered.mirror`: who writes the offset syncs.
    Mirror {
        /// `tollgate mirror`: a sync at every change of the offset mapping.
        Tollgate = "tollgate",
        /// MirrorMaker 2: sparse syncs.
        MirrorMaker2 = "mirrormaker2",
    }
}

choice! {
    /// `tiered.offset_syncs_cluster`: which cluster holds the offset-syncs topic.
    SyncsCluster {
        Secondary = "secondary",
        Primary = "primary",
    }
}

choice! {
    /// `tiered.lag_unit`: what the routing thresholds measure.
    LagUnit {
        Records = "records",
        /// Records times the partition's bytes-per-offset estimate.
        Bytes = "bytes",
    }
}

choice! {
    /// `log.format`.
    LogFormat {
        Text = "text",
        Json = "json",
    }
}

/// Every choice setting: its key and the words it accepts.
const CHOICES: &[(&str, &[&str])] = &[
    ("tiered.topic_naming", TopicNaming::WORDS),
    ("tiered.mirror", Mirror::WORDS),
    ("tiered.offset_syncs_cluster", SyncsCluster::WORDS),
    ("tiered.lag_unit", LagUnit::WORDS),
    ("log.format", LogFormat::WORDS),
];

/// Each choice setting in the merged config (defaults, file, environment) holds one of its
/// words; the first that does not is the error, by its key.
pub(super) fn check(value: &toml::Value) -> Result<(), ConfigError> {
    for (key, words) in CHOICES {
        let (section, name) = key.split_once('.').expect("section.key");
        let Some(v) = value.get(section).and_then(|s| s.get(name)) else {
            continue;
        };
        if v.as_str().is_some_and(|w| words.contains(&w)) {
            continue;
        }
        let quoted: Vec<String> = words.iter().map(|o| format!("{o:?}")).collect();
        return Err(invalid(
            key,
            format!("{v} is not one of {}", quoted.join(", ")),
        ));
    }
    Ok(())
}
