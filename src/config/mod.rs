//! Configuration: pgbouncer.ini, userlist.txt, typed settings and validation.
