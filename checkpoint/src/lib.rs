//! Per-file checkpoints (file identity → offsets) kept in sled. Built with the
//! harvester (issue #4); this crate is a placeholder in the workspace until
//! then and exports nothing.
