//! periscope
