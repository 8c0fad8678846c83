//! Engine adapters (being written).
