CREATE TABLE t(x); INSERT INTO t SELECT channel_send('c', 'x'); UPDATE t SET x = channel_recv('c');
