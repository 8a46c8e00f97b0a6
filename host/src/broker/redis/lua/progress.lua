-- Record running jobs' latest progress: ARGV[3..] = id, token, progress JSON triples. A job whose
-- lease moved on is skipped. KEYS[8..]: their records.
declare(8, ids_in_argv(3, 3))
for i = 3, #ARGV, 3 do
  if holds(ARGV[i], ARGV[i + 1]) then
    redis.call('HSET', job_key(ARGV[i]), 'progress', ARGV[i + 2])
  end
end
return 1
