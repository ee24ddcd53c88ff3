SELECT channel_send('a', 1 || ''); SELECT * FROM chanlite_channels AS c, channel_recv_batch(c.channel, 2);
