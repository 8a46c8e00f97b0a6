-- Record running jobs' latest progress: ARGV[3..] = id, token, progress JSON triples. A job whose
-- lease moved on is skipped.
for i = 3, #ARGV, 3 do
  if holds(ARGV[i], ARGV[i + 1]) then
    redis.call('HSET', ARGV[1] .. ARGV[i], 'progress', ARGV[i + 2])
  end
end
return 1
