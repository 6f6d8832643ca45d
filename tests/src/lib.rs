//! Test support: network namespaces, UML guests, frame builders.
