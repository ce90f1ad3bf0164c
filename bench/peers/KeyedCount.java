// Flink Java DataStream twin of bench/jobs/keyed_count_job.py, compiled and run by
// bench/peers.py against the jars of a Flink distribution (not a project dependency).
//
//   java -cp CLASSES:FLINK_LIB/* KeyedCount OUT EVENTS KEYS INTERVAL_MS CHECKPOINT_DIR
//
// A local StreamExecutionEnvironment (a MiniCluster in this JVM) at parallelism 1 with the
// hashmap state backend and exactly-once checkpoints every INTERVAL_MS (0: off) to
// CHECKPOINT_DIR. Event i (a bounded number sequence) is (i % keys, i / keys); keyBy the
// key; a KeyedProcessFunction keeps (count, sum) in a ValueState and registers one
// event-time timer per key at the end of time, which the MAX watermark at the end of the
// bounded input fires; each timer emits "key count sum" to a FileSink (exactly-once: part
// files are committed on checkpoints and at the end of input), straight under OUT.
//
// Prints "submitted-cpu-ns N" when the job is submitted (the MiniCluster is up) and
// "finished-cpu-ns N net-runtime-ms M" at the end: the process CPU time of this JVM (all
// threads), so the caller can leave the JVM's and the MiniCluster's start-up out.
import org.apache.flink.api.common.serialization.SimpleStringEncoder;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.java.tuple.Tuple2;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.connector.file.sink.FileSink;
import org.apache.flink.core.execution.JobClient;
import org.apache.flink.core.execution.JobListener;
import org.apache.flink.core.fs.Path;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.streaming.api.functions.sink.filesystem.bucketassigners.BasePathBucketAssigner;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.util.Collector;

public class KeyedCount {
    static final long END_OF_TIME = 1L << 62;

    /** Per key: (count, sum of values); one output row when event time ends. */
    public static class CountSum extends KeyedProcessFunction<Long, Tuple2<Long, Long>, String> {
        private transient ValueState<Tuple2<Long, Long>> acc;

        @Override
        public void open(org.apache.flink.api.common.functions.OpenContext context) {
            acc = getRuntimeContext().getState(
                    new ValueStateDescriptor<>("count-sum", Types.TUPLE(Types.LONG, Types.LONG)));
        }

        @Override
        public void processElement(Tuple2<Long, Long> e, Context ctx, Collector<String> out)
                throws Exception {
            Tuple2<Long, Long> a = acc.value();
            if (a == null) {
                a = Tuple2.of(1L, e.f1);
                ctx.timerService().registerEventTimeTimer(END_OF_TIME);
            } else {
                a = Tuple2.of(a.f0 + 1, a.f1 + e.f1);
            }
            acc.update(a);
        }

        @Override
        public void onTimer(long timestamp, OnTimerContext ctx, Collector<String> out)
                throws Exception {
            Tuple2<Long, Long> a = acc.value();
            out.collect(ctx.getCurrentKey() + " " + a.f0 + " " + a.f1);
        }
    }

    public static void main(String[] args) throws Exception {
        String out = args[0];
        long events = Long.parseLong(args[1]);
        long keys = Long.parseLong(args[2]);
        long interval = Long.parseLong(args[3]);
        String checkpoints = new java.io.File(args[4]).toURI().toString();

        Configuration conf = new Configuration();
        conf.setString("state.backend.type", "hashmap");
        conf.setString("execution.checkpointing.storage", "filesystem");
        conf.setString("execution.checkpointing.dir", checkpoints);
        // Flink 1.x names of the same options (2.x ignores them).
        conf.setString("state.checkpoint-storage", "filesystem");
        conf.setString("state.checkpoints.dir", checkpoints);
        StreamExecutionEnvironment env = StreamExecutionEnvironment.createLocalEnvironment(1, conf);
        if (interval > 0) {
            env.enableCheckpointing(interval); // exactly-once is the default mode
        }
        env.fromSequence(0, events - 1)
                .name("events")
                .map(i -> Tuple2.of(i % keys, i / keys))
                .returns(Types.TUPLE(Types.LONG, Types.LONG))
                .keyBy(e -> e.f0, Types.LONG)
                .process(new CountSum())
                .name("count-sum")
                .sinkTo(FileSink.forRowFormat(new Path(out), new SimpleStringEncoder<String>())
                        .withBucketAssigner(new BasePathBucketAssigner<>())
                        .build())
                .name("sink");
        env.registerJobListener(new JobListener() {
            @Override
            public void onJobSubmitted(JobClient client, Throwable error) {
                System.out.println("submitted-cpu-ns " + processCpuNs());
                System.out.flush();
            }

            @Override
            public void onJobExecuted(
                    org.apache.flink.api.common.JobExecutionResult result, Throwable error) {}
        });
        long runtime = env.execute("keyed-count").getNetRuntime();
        System.out.println("finished-cpu-ns " + processCpuNs() + " net-runtime-ms " + runtime);
    }

    static long processCpuNs() {
        return ((com.sun.management.OperatingSystemMXBean)
                        java.lang.management.ManagementFactory.getOperatingSystemMXBean())
                .getProcessCpuTime();
    }
}
