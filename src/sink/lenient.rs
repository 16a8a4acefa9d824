//! Numbers and booleans also accepted as strings: `KUBEWIRE__SINK__...` overrides arrive as
//! strings, and inside the internally tagged `sink` enum serde no longer lets the `config`
//! crate convert them.
use serde::{Deserialize, Deserializer, de::Error};

#[derive(Deserialize)]
#[serde(untagged)]
enum Raw<T> {
    Typed(T),
    Text(String),
}

pub(crate) fn number<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + std::str::FromStr,
{
    match Raw::<T>::deserialize(d)? {
        Raw::Typed(v) => Ok(v),
        Raw::Text(s) => s
            .trim()
            .parse()
            .map_err(|_| D::Error::custom(format!("{s:?} is not a non-negative integer"))),
    }
}

pub(crate) fn boolean<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    match Raw::<bool>::deserialize(d)? {
        Raw::Typed(v) => Ok(v),
        Raw::Text(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(D::Error::custom(format!("{s:?} is not true or false"))),
        },
    }
}
