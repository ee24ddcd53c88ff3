CREATE TABLE g(a, b AS (chanlite_clock(1))); INSERT INTO g(a) VALUES (1); CREATE TABLE k(a CHECK (chanlite_clock(a)));  INSERT INTO k VALUES (2);
