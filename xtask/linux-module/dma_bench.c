// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * dma_bench: the Linux side of `cargo xtask bench --vs-linux`.
 *
 * Binds to the QEMU edu device (1234:11e8), gives it a 32-bit DMA mask and times the streaming
 * DMA API (iommu-dma over intel-iommu) for the operations our kernel's `KBENCH` rows time
 * (kernel/src/bench.rs), under the same names:
 *
 *   map_unmap_4k, map_unmap_64k, map_unmap_2m   dma_map_single + dma_unmap_single, one live
 *   map_sg_256                                  dma_map_sg + dma_unmap_sg of 256 4 KiB pages
 *   map_unmap_4k_batched_64, ..._256            N live mappings of one page, then N unmaps
 *
 * Each operation is warmed up untimed, then timed as a whole with ktime and the TSC. One line
 * per operation goes to the kernel log, totals only (xtask divides):
 *
 *   LBENCH <name> ops=<n> ns=<total ns> cycles=<total TSC cycles> tsc_khz=<kHz>
 *
 * preceded by `LBENCH_MARK <name>` when the clock starts, plus `LBENCH_INFO iommu_mapped=<0|1> first_iova=<hex> mask_bits=<n>` so the host can refuse a
 * run in which the device bypassed the IOMMU. Nothing is written to the device.
 */
#include <linux/device.h>
#include <linux/dma-mapping.h>
#include <linux/gfp.h>
#include <linux/ktime.h>
#include <linux/module.h>
#include <linux/pci.h>
#include <linux/scatterlist.h>
#include <linux/slab.h>
#include <linux/timex.h>
#include <asm/tsc.h>

static unsigned int iters = 2000;
module_param(iters, uint, 0444);
MODULE_PARM_DESC(iters, "map+unmap pairs timed for 4 KiB and 64 KiB");
static unsigned int iters_2m = 200;
module_param(iters_2m, uint, 0444);
MODULE_PARM_DESC(iters_2m, "map+unmap pairs timed for 2 MiB");
static unsigned int iters_sg = 50;
module_param(iters_sg, uint, 0444);
MODULE_PARM_DESC(iters_sg, "256-entry scatter-list map+unmap pairs timed");
static unsigned int batch_ops = 1920;
module_param(batch_ops, uint, 0444);
MODULE_PARM_DESC(batch_ops, "mappings timed per batched row (rounded down to whole batches)");

#define SG_ENTRIES 256
#define SG_ORDER 8 /* 2^8 pages = 256 contiguous 4 KiB pages */

struct clock {
	u64 ns;
	u64 cycles;
};

static void clock_start(struct clock *c)
{
	c->ns = ktime_get_ns();
	c->cycles = get_cycles();
}

static void clock_stop(struct clock *c)
{
	c->cycles = get_cycles() - c->cycles;
	c->ns = ktime_get_ns() - c->ns;
}

/*
 * Printed after the warm-up, right before the clock starts: on a console at loglevel 7 (the
 * traced run) the VT-d register accesses between this line and the result line are the timed
 * operations' own.
 */
static void mark(const char *name)
{
	pr_info("LBENCH_MARK %s\n", name);
}

static void report(const char *name, u64 ops, const struct clock *c)
{
	pr_info("LBENCH %s ops=%llu ns=%llu cycles=%llu tsc_khz=%u\n", name, ops, c->ns,
		c->cycles, tsc_khz);
}

/* `n` map+unmap pairs of one buffer; returns 0 or -EIO on a mapping error. */
static int pairs(struct device *dev, void *buf, size_t size, unsigned int n)
{
	unsigned int i;

	for (i = 0; i < n; i++) {
		dma_addr_t h = dma_map_single(dev, buf, size, DMA_BIDIRECTIONAL);

		if (dma_mapping_error(dev, h))
			return -EIO;
		dma_unmap_single(dev, h, size, DMA_BIDIRECTIONAL);
	}
	return 0;
}

static int bench_pairs(struct device *dev, const char *name, size_t size, unsigned int n)
{
	unsigned long buf = __get_free_pages(GFP_KERNEL | __GFP_NOWARN, get_order(size));
	struct clock c;
	int ret;

	if (!buf)
		return -ENOMEM;
	ret = pairs(dev, (void *)buf, size, n / 4 + 1); /* warm-up */
	if (!ret) {
		mark(name);
		clock_start(&c);
		ret = pairs(dev, (void *)buf, size, n);
		clock_stop(&c);
	}
	if (!ret)
		report(name, n, &c);
	free_pages(buf, get_order(size));
	return ret;
}

static int sg_round(struct device *dev, struct scatterlist *sgl)
{
	int mapped = dma_map_sg(dev, sgl, SG_ENTRIES, DMA_BIDIRECTIONAL);

	if (mapped <= 0)
		return -EIO;
	dma_unmap_sg(dev, sgl, SG_ENTRIES, DMA_BIDIRECTIONAL);
	return 0;
}

static int bench_sg(struct device *dev, unsigned int n)
{
	struct page *pages = alloc_pages(GFP_KERNEL | __GFP_NOWARN, SG_ORDER);
	struct scatterlist *sgl;
	struct clock c;
	unsigned int i;
	int ret = 0;

	if (!pages)
		return -ENOMEM;
	sgl = kcalloc(SG_ENTRIES, sizeof(*sgl), GFP_KERNEL);
	if (!sgl) {
		__free_pages(pages, SG_ORDER);
		return -ENOMEM;
	}
	sg_init_table(sgl, SG_ENTRIES);
	for (i = 0; i < SG_ENTRIES; i++)
		sg_set_page(&sgl[i], pages + i, PAGE_SIZE, 0);
	for (i = 0; i < n / 4 + 1 && !ret; i++)
		ret = sg_round(dev, sgl);
	if (!ret) {
		mark("map_sg_256");
		clock_start(&c);
		for (i = 0; i < n && !ret; i++)
			ret = sg_round(dev, sgl);
		clock_stop(&c);
	}
	if (!ret)
		report("map_sg_256", n, &c);
	kfree(sgl);
	__free_pages(pages, SG_ORDER);
	return ret;
}

/* `rounds` times: `per` live mappings of one page, then all unmapped. */
static int batches(struct device *dev, void *buf, dma_addr_t *h, unsigned int per,
		   unsigned int rounds)
{
	unsigned int r, j;

	for (r = 0; r < rounds; r++) {
		for (j = 0; j < per; j++) {
			h[j] = dma_map_single(dev, buf, PAGE_SIZE, DMA_BIDIRECTIONAL);
			if (dma_mapping_error(dev, h[j])) {
				while (j--)
					dma_unmap_single(dev, h[j], PAGE_SIZE, DMA_BIDIRECTIONAL);
				return -EIO;
			}
		}
		for (j = 0; j < per; j++)
			dma_unmap_single(dev, h[j], PAGE_SIZE, DMA_BIDIRECTIONAL);
	}
	return 0;
}

static int bench_batched(struct device *dev, const char *name, unsigned int per)
{
	unsigned int rounds = max(1u, batch_ops / per);
	unsigned long buf = __get_free_page(GFP_KERNEL);
	dma_addr_t *h = kcalloc(per, sizeof(*h), GFP_KERNEL);
	struct clock c;
	int ret = -ENOMEM;

	if (buf && h) {
		ret = batches(dev, (void *)buf, h, per, 1); /* warm-up */
		if (!ret) {
			mark(name);
			clock_start(&c);
			ret = batches(dev, (void *)buf, h, per, rounds);
			clock_stop(&c);
		}
		if (!ret)
			report(name, (u64)rounds * per, &c);
	}
	kfree(h);
	if (buf)
		free_page(buf);
	return ret;
}

/* Where a mapping lands, and whether the IOMMU translates for the device at all. */
static int info(struct device *dev)
{
	unsigned long buf = __get_free_page(GFP_KERNEL);
	dma_addr_t h;

	if (!buf)
		return -ENOMEM;
	h = dma_map_single(dev, (void *)buf, PAGE_SIZE, DMA_BIDIRECTIONAL);
	if (dma_mapping_error(dev, h)) {
		free_page(buf);
		return -EIO;
	}
	pr_info("LBENCH_INFO iommu_mapped=%d first_iova=%#llx mask_bits=32\n",
		device_iommu_mapped(dev) ? 1 : 0, (unsigned long long)h);
	dma_unmap_single(dev, h, PAGE_SIZE, DMA_BIDIRECTIONAL);
	free_page(buf);
	return 0;
}

static int dma_bench_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct device *dev = &pdev->dev;
	int ret;

	ret = pcim_enable_device(pdev);
	if (ret)
		return ret;
	ret = dma_set_mask_and_coherent(dev, DMA_BIT_MASK(32));
	if (ret)
		return ret;
	ret = info(dev);
	if (!ret)
		ret = bench_pairs(dev, "map_unmap_4k", SZ_4K, iters);
	if (!ret)
		ret = bench_pairs(dev, "map_unmap_64k", SZ_64K, iters);
	if (!ret)
		ret = bench_pairs(dev, "map_unmap_2m", SZ_2M, iters_2m);
	if (!ret)
		ret = bench_sg(dev, iters_sg);
	if (!ret)
		ret = bench_batched(dev, "map_unmap_4k_batched_64", 64);
	if (!ret)
		ret = bench_batched(dev, "map_unmap_4k_batched_256", 256);
	if (ret)
		pr_info("LBENCH_ERROR %d\n", ret);
	return ret;
}

static const struct pci_device_id dma_bench_ids[] = {
	{ PCI_DEVICE(0x1234, 0x11e8) }, /* QEMU edu */
	{}
};
MODULE_DEVICE_TABLE(pci, dma_bench_ids);

static struct pci_driver dma_bench_driver = {
	.name = "dma_bench",
	.id_table = dma_bench_ids,
	.probe = dma_bench_probe,
};
module_pci_driver(dma_bench_driver);

MODULE_DESCRIPTION("Streaming DMA API timings on the QEMU edu device (cargo xtask bench --vs-linux)");
MODULE_LICENSE("Dual MIT/GPL");
