CREATE VIEW v AS SELECT channel_recv('c') AS m; SELECT * FROM v; CREATE VIEW w AS SELECT * FROM channel_recv_batch('c', 2); SELECT * FROM w;
