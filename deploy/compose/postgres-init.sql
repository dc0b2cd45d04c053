-- Run once by the postgres image on an empty data volume (/docker-entrypoint-initdb.d): the wheel's
-- position database beside greekfire's own (POSTGRES_DB).
CREATE DATABASE wheel OWNER greekfire;
