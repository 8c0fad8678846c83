//! Spider file sync (being written).
