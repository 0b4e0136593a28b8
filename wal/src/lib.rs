//! The agent's write-ahead spool. The format, invariants and recovery rules
//! are specified with the implementation (issue #3); this crate is a
//! placeholder in the workspace until then and exports nothing.
