SELECT channel_send('chat', 'hi'), channel_send('chat', x'00ff'); SELECT channel_recv('chat'), typeof(channel_recv('chat'));
