//! Test-only: throwaway network namespaces and running code inside them.
