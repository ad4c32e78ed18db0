//! A throwaway PostgreSQL cluster (initdb + pg_ctl in a temp dir) for the demo and tests.
